"""Causal language model on the BRT backbone, with the carried state it trains on."""

import importlib
import math

import keras
import numpy as np
from keras import ops
from keras.src.backend.common.symbolic_scope import in_symbolic_scope

from keras_brt.models import lanes as lane_rows
from keras_brt.distribute import replicas
from keras_brt.models.backbone import BlockRecurrentTransformerBackbone, concrete_value
from keras_brt.models.generation import Generator
from keras_brt.models.input_checks import checked_batch, checked_inputs, reraising_bad_batches
from keras_brt.models.losses import TokenCrossEntropy
from keras_brt.models import preset_io, update_guard
from keras_brt.models.update_guard import NonFiniteUpdateStop


def _lane_count(x, batch_size):
    """The batch size of the first batch `fit`/`evaluate`/`predict` will see, if knowable."""
    if hasattr(x, "element_spec"):  # A tf.data.Dataset, checked without importing TF.
        spec = x.element_spec
        spec = spec[0] if isinstance(spec, tuple) else spec
        spec = spec["token_ids"] if isinstance(spec, dict) else spec
        return spec.shape[0]
    token_ids = x.get("token_ids") if isinstance(x, dict) else x
    if hasattr(token_ids, "shape") and len(token_ids.shape) == 2:
        return min(batch_size or 32, token_ids.shape[0])
    return None


@keras.saving.register_keras_serializable(package="keras_brt")
class BlockRecurrentTransformerCausalLM(keras.Model):
    """Next-token language model over long documents, block by block.

    Logits are the final hidden states times the tied token embedding, divided
    by √D (meliad's current code; its 2022 code divided by √V), in float32.

    Two ways to run it:

    - `call_with_state(token_ids, state, start_of_sequence, padding_mask)` is
      stateless and functional: it returns `(logits, new_state)`. Calling it on
      consecutive chunks (the first a multiple of W long) with the returned
      state gives the logits of one call on the concatenation.
    - `fit`/`evaluate`/`predict` (and `lm(inputs)`) are stateful: each batch
      row is a lane, one document stream, and the state after each batch is
      kept in non-trainable variables and carried into the next batch of the
      same lane, with no gradient across batches (truncated BPTT) and a reset
      of the rows whose `start_of_sequence` is true. Training and inference
      keep separate lanes: `evaluate` and `predict` start from fresh lanes and
      never disturb the training lanes. The lanes are created for the batch
      size of the first batch and saved with the weights and checkpoints, so
      a resumed run continues exactly. `reset_state()` resets every lane.

    Inputs of the stateful path are `token_ids` `(B, T)` or a dict with
    `token_ids`, optional `start_of_sequence` `(B,)` and `padding_mask`
    `(B, T)`; targets are the next-token ids `(B, T)`.

    Args:
        backbone: a `BlockRecurrentTransformerBackbone`.
        tokenizer: optional tokenizer for string prompts in `generate()` (not
            saved with the model; also `lm.generator.tokenizer`).
        preprocessor: optional `keras_brt.data.BlockRecurrentTransformerCausalLMPreprocessor`
            (KerasHub's role): `fit`, `evaluate` and `predict` then take strings,
            each one sequence scored on its own, and its tokenizer is the default
            of `generate()`. Saved with the model.
        **kwargs: base model arguments such as `name`.

    Example:

    ```python
    backbone = keras_brt.models.BlockRecurrentTransformerBackbone.from_preset(
        "tiny_rec_fixed_skip")
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM(backbone)
    lm.compile(optimizer="adam")
    lm.fit(dataset)  # (x, y) with x = {"token_ids", "start_of_sequence"}
    logits, state = lm.call_with_state(token_ids)
    logits, state = lm.call_with_state(next_token_ids, state)
    ```
    """

    def __init__(self, backbone, tokenizer=None, preprocessor=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(backbone, BlockRecurrentTransformerBackbone):
            raise ValueError(
                "`backbone` must be a BlockRecurrentTransformerBackbone. "
                f"Received: backbone={backbone!r}"
            )
        if preprocessor is not None and tokenizer is not None \
                and tokenizer is not preprocessor.tokenizer:
            raise ValueError(
                "Give the tokenizer through the preprocessor (generate() and fit() must "
                f"tokenize alike). Received: tokenizer={tokenizer!r} and a preprocessor "
                f"with tokenizer={preprocessor.tokenizer!r}"
            )
        if preprocessor is not None and not preprocessor.add_start_token:
            raise ValueError(
                "generate() starts every prompt with a BOS, so the preprocessor must too. "
                "Received: a preprocessor with add_start_token=False"
            )
        self.backbone = backbone
        self.preprocessor = preprocessor
        if tokenizer is None and preprocessor is not None:
            tokenizer = preprocessor.tokenizer
        self._lanes = None  # {"train": {...}, "eval": {...}} once the batch is known.
        # A plain object, untracked by Keras: the default sampler and tokenizer, and the
        # compiled generate functions.
        self.generator = Generator(tokenizer=tokenizer)
        self.replica_step = None  # tf.distribute only: see replica_xla

    # === Building and carried lanes ===

    def build(self, inputs_shape=None):
        """Builds the backbone and, when the batch size is known, the carried lanes."""
        shape = inputs_shape["token_ids"] if isinstance(inputs_shape, dict) else inputs_shape
        self.backbone.build()
        if shape is not None and shape[0] is not None and self._lanes is None:
            self._create_lanes(int(shape[0]))
        self.built = True

    def get_build_config(self):
        # The lanes are part of the saved state: record their count, however
        # they were created, so a loaded model has the same variables.
        if not self.built:
            return None
        return {"lane_batch_size": self.lane_batch_size if self._lanes is not None else None}

    def build_from_config(self, config):
        self.build()
        if config.get("lane_batch_size") and self._lanes is None:
            self._create_lanes(int(config["lane_batch_size"]))

    def _ensure_lanes(self, x, batch_size=None):
        if self._lanes is None:
            count = _lane_count(x, batch_size)
            if count is not None:
                with replicas.model_scope(self):  # fit() may run before any build
                    if not self.built:
                        self.build()
                    self._create_lanes(count)

    def _create_lanes(self, batch_size):
        # They may be created after build() (once a first batch shows the batch
        # size), so unlock the variable tracker as Keras's own quantize() does.
        locked = self._tracker.locked
        self._tracker.unlock()
        with replicas.model_scope(self):
            self._lanes = {mode: lane_rows.create(self, self.backbone.state_shapes(batch_size), mode)
                           for mode in lane_rows.MODES}
            self._skipped_update = update_guard.create_flag(self)
        self.lane_batch_size = batch_size
        if locked:
            self._tracker.lock()

    @property
    def skipped_update(self):
        """The training guard's `()` int32 variable: 1 once a training step was not
        applied because its loss or update was not finite (see
        `keras_brt.models.update_guard`); None before the lanes exist. Not saved."""
        return getattr(self, "_skipped_update", None)

    def _saved_variables(self):
        return [v for v in self._trainable_variables + self._non_trainable_variables
                if v is not self.skipped_update]

    def save_own_variables(self, store):
        # The lanes, not the training guard's flag: files stay as they were before it.
        for i, variable in enumerate(self._saved_variables()):
            store[f"{i}"] = variable

    def load_own_variables(self, store):
        variables = self._saved_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"The weights file holds {len(store.keys())} variables of the causal LM "
                f"(its carried lanes), but this model has {len(variables)}: "
                f"{[v.name for v in variables]}. Received: {len(store.keys())} variables"
            )
        for i, variable in enumerate(variables):
            variable.assign(store[f"{i}"])

    def reset_state(self, mode=None):
        """Resets every lane: its next batch starts from the initial state.

        Args:
            mode: None (both), `"train"` or `"eval"`.
        """
        if self._lanes is None:
            return
        for m in ("train", "eval") if mode is None else (mode,):
            self._lanes[m]["reset"].assign(ops.ones((self.lane_batch_size,), "int32"))

    def lane_state(self, mode="train"):
        """Returns the carried state of the lanes of `mode` as a dict of tensors."""
        if self._lanes is None:
            raise ValueError("The lanes do not exist yet: call or fit the model first.")
        return {
            name: ops.convert_to_tensor(v) for name, v in self._lanes[mode].items() if name != "reset"
        }

    # === Forward ===

    def initial_state(self, batch_size):
        """The carried state of `batch_size` fresh lanes (see the backbone)."""
        return self.backbone.initial_state(batch_size)

    def call_with_state(
        self,
        token_ids,
        state=None,
        start_of_sequence=None,
        padding_mask=None,
        training=False,
    ):
        """Stateless forward pass.

        Args:
            token_ids: int `(B, T)`, any T >= 1.
            state: carried-state dict, or None for `initial_state(B)`.
            start_of_sequence: optional bool `(B,)`; true rows restart from
                the initial state.
            padding_mask: optional `(B, T)`; false positions are null tokens.
            training: bool, enables dropout.

        Returns:
            `(logits (B, T, V) float32, new_state)`. When T is not a multiple
            of W the logits are exact; the returned state then treats the rest
            of the last block as null padding (right to end a document; stream
            in multiples of W to continue one).
        """
        if isinstance(token_ids, (list, tuple)):  # Python ids: an integer array, or a named error.
            token_ids = np.asarray(token_ids)
            if token_ids.size and not np.issubdtype(token_ids.dtype, np.integer):
                raise ValueError(f"`token_ids` must be integers. Received: token_ids of dtype "
                                 f"{token_ids.dtype}")
            token_ids = token_ids.astype("int32")
        if not self.built:
            self.build()
        hidden, new_state = self.backbone(
            token_ids,
            state=state,
            start_of_sequence=start_of_sequence,
            padding_mask=padding_mask,
            training=training,
        )
        return self.compute_logits(hidden), new_state

    # === Generation ===

    @property
    def tokenizer(self):
        """The default tokenizer of `generate()` for string prompts (`lm.generator.tokenizer`;
        not saved with the model)."""
        return self.generator.tokenizer

    @property
    def sampler(self):
        """The default sampler of `generate()`: the one given to `compile()`, else greedy."""
        return self.generator.sampler

    def generate(self, inputs, max_length, sampler=None, stop_token_ids=None, strip_prompt=False,
                 seed=None, tokenizer=None):
        """Continues prompts, carrying the recurrent state through the output.

        Prompts of any length are prefilled block by block, then tokens are
        decoded one at a time with a fixed-size cache; the state advances at
        every block boundary, exactly as `call_with_state` computes it (greedy
        output equals the argmax of `call_with_state` on the generated text).
        The decoding function is XLA-compiled once per batch size, `max_length`,
        sampler and whether ids are masked, and reused (see
        `keras_brt.models.generation.Generator`).

        Strings out are made of ids the tokenizer can decode: the ids at or above
        its vocabulary size (the byte presets' 264 ids hold `ByteTokenizer`'s 259),
        its padding id and its BOS are never sampled, whatever the sampler (their
        logits are -inf inside the compiled step;
        `keras_brt.models.generation.samplable_ids`). Its EOS and the stop ids stay
        samplable. Ids out are never masked. Greedy text is then the argmax over
        the samplable ids.

        Args:
            inputs: a string or list of strings (with a tokenizer; a BOS is
                prepended, so `""` continues from the BOS alone), a sequence of
                ids, a list of id sequences of any lengths, a 2-D array, or a dict
                with `token_ids` and `padding_mask` (right-padded).
            max_length: int, total length of prompt plus output (above every
                prompt's length).
            sampler: a name (`"greedy"`, `"random"`, `"top_k"`, `"top_p"`), a
                `keras_brt.models.Sampler`, or a `keras_hub.samplers.Sampler`;
                default: the one given to `compile()`, else greedy.
            stop_token_ids: ids that end a row (kept in the output), `"auto"`
                for the tokenizer's EOS, or None.
            strip_prompt: return only the generated tokens.
            seed: int seed of the random draws (reproducible output).
            tokenizer: for strings; default `lm.tokenizer` (the one given to the
                constructor or set as `lm.generator.tokenizer`).

        Returns:
            For strings, the generated strings (one string for one prompt); for
            ids, a dict of `token_ids` and `padding_mask` `(B, L)` in which the
            tokens after a stop token are masked out.

        Example:

        ```python
        lm.generate([[1, 72, 101], [1, 80]], max_length=64, sampler="top_k", seed=0)
        lm.generate("def main():", max_length=200, tokenizer=keras_brt.data.ByteTokenizer())
        ```
        """
        return self.generator(self, inputs, max_length, sampler=sampler,
                              stop_token_ids=stop_token_ids, strip_prompt=strip_prompt, seed=seed,
                              tokenizer=tokenizer)

    def compute_logits(self, hidden):
        """Tied-embedding logits `(B, T, V)` in float32, divided by √D."""
        embeddings = self.backbone.output_embeddings(hidden.dtype)  # (V, D)
        logits = ops.matmul(hidden, ops.transpose(embeddings))  # (B, T, V)
        return ops.cast(logits, "float32") / math.sqrt(self.backbone.hidden_dim)

    def call(self, inputs, training=False):
        token_ids, start_of_sequence, padding_mask = lane_rows.unpack_inputs(inputs)
        if in_symbolic_scope():
            # Keras traces the model only to learn output shapes (e.g. to build
            # metrics, where a replica's batch meets the global lanes): no lanes.
            return self.call_with_state(token_ids, None, start_of_sequence, padding_mask)[0]
        batch = token_ids.shape[0]
        if self._lanes is None and batch is not None and concrete_value(token_ids) is not None:
            self._create_lanes(batch)  # A first eager stateful call.
        if self._lanes is None:
            raise ValueError(
                "Stateful calls need a static batch size to create the lanes. Received: "
                f"token_ids.shape={tuple(token_ids.shape)}. Build the lanes first with "
                "lm.build({'token_ids': (batch_size, length)}), or use call_with_state()."
            )
        # Under a multi-replica strategy this replica carries its own rows of the lanes.
        context = replicas.replica_context()
        rows = lane_rows.rows_per_replica(self.lane_batch_size, context)
        token_ids, start_of_sequence, padding_mask = (
            lane_rows.with_rows(t, rows) for t in (token_ids, start_of_sequence, padding_mask)
        )
        if batch is not None and batch != rows:
            raise ValueError(
                f"The model carries {self.lane_batch_size} lanes (batch rows) from batch to "
                f"batch; every batch must have that many rows (use drop_remainder=True). "
                f"Received: token_ids.shape={tuple(token_ids.shape)} on each of "
                f"{replicas.num_replicas(context)} replica(s). "
                "For another batch size use call_with_state() or a new model."
            )
        variables = self._lanes["train" if training else "eval"]
        state, reset = lane_rows.read(variables, context, rows, start_of_sequence)
        logits, new_state = self.call_with_state(token_ids, state, reset, padding_mask,
                                                 training=training)
        lane_rows.write(variables, new_state, context, rows)
        return logits

    def compute_output_spec(self, inputs, training=False):
        token_ids = inputs["token_ids"] if isinstance(inputs, dict) else inputs
        return keras.KerasTensor(
            tuple(token_ids.shape) + (self.backbone.vocabulary_size,), dtype="float32"
        )

    # === Training entry points ===

    def compile(self, optimizer="auto", loss="auto", weighted_metrics="auto", jit_compile="auto",
                sampler="greedy", **kwargs):
        """`keras.Model.compile` with defaults for language modeling.

        `"auto"` gives AdamW (learning rate 1e-3), `TokenCrossEntropy` (sparse
        cross-entropy on the float32 logits) and weighted token accuracy
        (`keras_brt.training.TokenAccuracy`; weights mask padding).
        `sampler` is `generate()`'s default (a name or a Sampler); compiling
        again drops the compiled generate functions.

        `jit_compile=True` under a multi-replica tf.distribute strategy (where
        Keras's own XLA path fails) compiles each replica's forward and
        backward pass with XLA and keeps the optimizer update outside it (see
        `keras_brt.distribute.replica_xla`).
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(1e-3)
        if loss == "auto":
            loss = TokenCrossEntropy()
        if weighted_metrics == "auto":
            from keras_brt.training.metrics import TokenAccuracy  # training imports models

            weighted_metrics = [TokenAccuracy()]
        self.generator = Generator(sampler, self.generator.tokenizer)  # no compiled functions
        self.replica_jit_compile = jit_compile is True and replicas.multi_replica_strategy()
        self.replica_step = None  # made by the first replica_xla.train_step
        super().compile(
            optimizer=optimizer,
            loss=loss,
            weighted_metrics=weighted_metrics,
            jit_compile=False if self.replica_jit_compile else jit_compile,
            **kwargs,
        )

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None and getattr(self, "replica_jit_compile", False):
            config["jit_compile"] = True  # What the user asked for; see compile().
        return config

    def train_step(self, *args, **kwargs):
        """Keras's step, except that an update whose loss or new weights are not
        finite is not applied, nor any later one until the host has seen it: every
        variable keeps its value and `skipped_update` is set (`fit` then stops with
        a `FloatingPointError`; see `keras_brt.models.update_guard`)."""
        if keras.backend.backend() == "jax":
            return update_guard.jax_step(self, super().train_step, *args, **kwargs)
        if keras.backend.backend() == "tensorflow":
            if getattr(self, "replica_jit_compile", False):
                from keras_brt.distribute import replica_xla

                step = lambda: replica_xla.train_step(self, *args)  # noqa: E731
            else:
                step = lambda: super(BlockRecurrentTransformerCausalLM, self).train_step(  # noqa: E731
                    *args, **kwargs)
            # Every replica restores or keeps alike: a NaN on one replica reaches the others'
            # weights through the all-reduced gradients, but its loss alone would not.
            logs = update_guard.tensorflow_step(self, step, replicas.all_replicas_agree)
            return replicas.multi_worker_logs(logs)
        return super().train_step(*args, **kwargs)

    def test_step(self, *args, **kwargs):
        if keras.backend.backend() == "tensorflow":
            return replicas.multi_worker_logs(super().test_step(*args, **kwargs))
        return super().test_step(*args, **kwargs)

    def _purge_model_variables(self, *args, **kwargs):
        """JAX: keeps each variable's value while `fit`, `evaluate` or `predict` runs.

        Keras empties the variables (to free memory) and puts back the values of the
        last step that ran; when the first step raises (a bad batch read from a
        `tf.data` pipeline, an error while tracing) there is none, and the model is
        left without values: every later call fails with "'NoneType' object is not
        callable" (keras-team/keras#21019). Keeping them costs no memory: the step
        donates the very arrays the variables hold, and the trainer puts the new
        ones back as before.
        """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15's TensorFlow trainer under tf.distribute would train on no batch it
        # builds metrics from: see replicas.metrics_build_batch.
        iterator, data_batch = replicas.metrics_build_batch(self, iterator, data_batch)
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def fit(self, x=None, y=None, batch_size=None, shuffle=False, **kwargs):
        """`keras.Model.fit` that keeps batch rows in their lanes.

        Rows are never shuffled (row i of every batch is lane i). With arrays,
        row `s * batch_size + i` is segment s of lane i; with a `tf.data`
        pipeline, shuffle documents before they are cut into lanes.
        """
        if shuffle:
            raise ValueError(
                "Stateful training carries batch row i to the next batch of lane i, so rows "
                "must not be shuffled; shuffle documents before cutting them into lanes. "
                f"Received: shuffle={shuffle!r}"
            )
        x, batch_size = self._strings_to_dataset(x, y, batch_size)
        self._ensure_lanes(x, batch_size)
        if "validation_data" in kwargs:  # strings batched like the training lanes
            kwargs["validation_data"] = self._validation_strings(kwargs["validation_data"])
        callbacks = kwargs.pop("callbacks", None) or []
        if not isinstance(callbacks, keras.callbacks.CallbackList) and not any(
                isinstance(c, NonFiniteUpdateStop) for c in callbacks):
            # First, so that no later callback (a checkpoint) sees a skipped step.
            callbacks = [NonFiniteUpdateStop(), *callbacks]
        validation = kwargs.get("validation_data")
        if isinstance(validation, (tuple, list)):
            self._checked(validation[0], validation[1] if len(validation) > 1 else None,
                          kwargs.get("validation_batch_size") or batch_size)
        elif validation is not None:
            kwargs["validation_data"] = self._checked(validation)
        update_guard.raise_if_skipped(self)  # left over from a run that was interrupted
        with self._reraising():
            history = super().fit(self._checked(x, y, batch_size), y, batch_size=batch_size,
                                  shuffle=False, callbacks=callbacks, **kwargs)
        update_guard.raise_if_skipped(self)  # also without NonFiniteUpdateStop
        return history

    def _strings_to_dataset(self, x, y=None, batch_size=None):
        """With a preprocessor, strings become its tf.data pipeline of `(x, y,
        sample_weight)` batches (which uses up `batch_size`), of as many rows as the
        model's lanes once they exist; anything else passes."""
        if self.preprocessor is None or x is None:
            return x, batch_size
        from keras_brt.data import preprocessing  # TensorFlow, which the preprocessor needs

        if not preprocessing.is_string_data(x):
            return x, batch_size
        if y is not None:
            raise ValueError(
                "With a preprocessor, strings are their own targets (the next tokens); "
                f"do not pass `y`. Received: y of type {type(y).__name__}"
            )
        rows = None if self._lanes is None else self.lane_batch_size
        if rows is not None and batch_size not in (None, rows):
            raise ValueError(
                f"The model carries {rows} lanes, so strings go in batches of {rows} rows "
                f"(short ones padded); leave out `batch_size`. Received: batch_size={batch_size}"
            )
        return preprocessing.string_dataset(self.preprocessor, x, batch_size, rows=rows), None

    def _validation_strings(self, data):
        """`validation_data` of strings (alone, or as Keras's `(x,)` / `(x, None)` tuples)
        becomes their tf.data pipeline; anything else passes."""
        if self.preprocessor is not None and isinstance(data, tuple) and 1 <= len(data) <= 3:
            from keras_brt.data import preprocessing

            if preprocessing.is_string_data(data[0]):
                if any(item is not None for item in data[1:]):
                    raise ValueError(
                        "With a preprocessor, validation strings are their own targets; pass "
                        "`validation_data=strings` or `(strings, None)`. Received: "
                        f"validation_data=(strings, {type(data[1]).__name__}"
                        f"{', ...' if len(data) > 2 else ''})"
                    )
                data = data[0]
        return self._strings_to_dataset(data)[0]

    def _string_rows(self, x):
        if self.preprocessor is None:
            return None
        from keras_brt.data import preprocessing

        return preprocessing.string_count(x)

    def _lane_rows(self):
        return None if self._lanes is None else self.lane_batch_size

    def _checked(self, x, y=None, batch_size=None):
        """`x` with every batch checked before a step sees it (see `input_checks`)."""
        return checked_inputs(x, self.backbone.vocabulary_size, y=y, lanes=self._lane_rows(),
                              batch_size=batch_size)

    def _reraising(self):
        return reraising_bad_batches(self.backbone.vocabulary_size, self._lane_rows())

    def train_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        """`keras.Model.train_on_batch` with the batch checked first."""
        self._ensure_lanes(x)
        checked_batch(x, self.backbone.vocabulary_size, y, self._lane_rows())
        logs = super().train_on_batch(x, y, sample_weight=sample_weight, **kwargs)
        update_guard.raise_if_skipped(self)
        return logs

    def test_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        """`keras.Model.test_on_batch` with the batch checked first."""
        self._ensure_lanes(x)
        checked_batch(x, self.backbone.vocabulary_size, y, self._lane_rows())
        return super().test_on_batch(x, y, sample_weight=sample_weight, **kwargs)

    def predict_on_batch(self, x):
        """`keras.Model.predict_on_batch` with the batch checked first."""
        self._ensure_lanes(x)
        checked_batch(x, self.backbone.vocabulary_size, None, self._lane_rows())
        return super().predict_on_batch(x)

    def compile_from_config(self, config):
        """Re-compiles a loaded model with the optimizer, loss and metrics it was saved with."""
        from keras_brt.training.metrics import BitsPerToken, TokenAccuracy  # training imports models

        objects = {"keras_brt>BitsPerToken": BitsPerToken, "keras_brt>TokenAccuracy": TokenAccuracy}
        self.compile(**keras.saving.deserialize_keras_object(config, custom_objects=objects))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def evaluate(self, x=None, y=None, batch_size=None, **kwargs):
        """`keras.Model.evaluate` starting from fresh inference lanes (strings too,
        with a preprocessor)."""
        x, batch_size = self._strings_to_dataset(x, y, batch_size)
        self._ensure_lanes(x, batch_size)
        self.reset_state("eval")
        with self._reraising():
            return super().evaluate(self._checked(x, y, batch_size), y, batch_size=batch_size,
                                    **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        """`keras.Model.predict` starting from fresh inference lanes (strings too, with a
        preprocessor: the logits of each string's padded sequence; a dataset of strings
        also gives the rows that fill its short last batch)."""
        rows = self._string_rows(x)  # in-memory strings: as many outputs as strings
        x, batch_size = self._strings_to_dataset(x, None, batch_size)
        self._ensure_lanes(x, batch_size)
        self.reset_state("eval")
        with self._reraising():
            logits = super().predict(self._checked(x, None, batch_size), batch_size=batch_size,
                                     **kwargs)
        return logits if rows is None else logits[:rows]

    # === Presets and config ===

    @classmethod
    def from_preset(cls, preset, load_weights=True, **overrides):
        """A causal LM from a named architecture preset (untrained, on
        `BlockRecurrentTransformerBackbone.from_preset(preset, **overrides)`), or the
        model saved by `save_to_preset` in the folder `preset`: config, weights,
        preprocessor and tokenizer (KerasHub's layout). An `hf://` or `kaggle://`
        handle of such a folder is downloaded first (see
        `keras_brt.models.preset_io.local_preset`).

        Example:

        ```python
        lm.save_to_preset("my_model")
        lm = keras_brt.models.BlockRecurrentTransformerCausalLM.from_preset("my_model")
        ```
        """
        preset = preset_io.local_preset(preset)
        if preset_io.is_preset_folder(preset):
            return preset_io.load_preset(cls, preset, load_weights, overrides)
        return cls(BlockRecurrentTransformerBackbone.from_preset(preset, **overrides))

    def save_to_preset(self, preset_dir):
        """Writes this model to the folder `preset_dir` in KerasHub's preset layout:
        `config.json`, `model.weights.h5` (the backbone's weights; the training lanes are
        not part of a preset), `metadata.json` and, with a tokenizer, `tokenizer.json`
        (a preprocessor is part of the model's config)."""
        preset_io.save_to_preset(self, self.backbone, preset_dir, self.generator.tokenizer)

    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
        }
        if self.preprocessor is not None:
            config["preprocessor"] = keras.saving.serialize_keras_object(self.preprocessor)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if config.get("preprocessor") is not None:
            importlib.import_module("keras_brt.data.preprocessing")  # registers it (TensorFlow)
            config["preprocessor"] = keras.saving.deserialize_keras_object(config["preprocessor"])
        return cls(**config)
