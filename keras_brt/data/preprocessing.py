"""Strings in, model inputs out: the causal LM's preprocessor, in KerasHub's role.

`BlockRecurrentTransformerCausalLMPreprocessor` turns a batch of strings into the
stateful model's inputs (`token_ids`, `padding_mask` and the lane flag
`start_of_sequence`), the next-token targets and the sample weights, as KerasHub's
`CausalLMPreprocessor` does. `string_dataset` is what `fit`, `evaluate` and `predict`
of a causal LM with a preprocessor do with strings. Like the tokenizers, it runs in
tf.data whatever the Keras backend.
"""

import importlib

import keras
import numpy as np
import tensorflow as tf

from keras_brt.layers.common import check_positive_int

importlib.import_module("keras_brt.data.tokenizers")  # registers them: a saved preprocessor names one


@keras.saving.register_keras_serializable(package="keras_brt")
class BlockRecurrentTransformerCausalLMPreprocessor(keras.layers.Layer):
    """Strings to causal-LM inputs: each string is one sequence, cut or padded to a length.

    Each string is tokenized, given a BOS (and an EOS), then cut or padded to
    `sequence_length + 1` ids: the inputs are the first `sequence_length`, the
    targets the last `sequence_length`, and the sample weights mask the padding.
    Every row starts a sequence (`start_of_sequence` is true), so the state a
    causal LM carries in that lane is reset for it: each string is scored on its
    own, as in KerasHub. For documents longer than one sequence, carried from
    batch to batch, use `keras_brt.data.lane_dataset` instead.

    Args:
        tokenizer: a `keras_brt.data.ByteTokenizer` or `SentencePieceTokenizer`
            (anything with `pad_id`, `bos_id`, `eos_id`, `vocabulary_size`, a
            call on a batch of strings giving ragged ids, and `detokenize`).
        sequence_length: int, tokens per sequence (the model's `T`).
        add_start_token: prepend the BOS id.
        add_end_token: append the EOS id (when it fits).
        **kwargs: base layer arguments such as `name`.

    Call arguments:
        x: a string scalar or a batch of strings `(B,)`.
        y: must be None: the targets are the next tokens of `x`.
        sample_weight: must be None: the weights mask the padding.

    Returns:
        `(x, y, sample_weight)`: `x` a dict of `token_ids` int32 `(B, T)`,
        `padding_mask` bool `(B, T)` and `start_of_sequence` bool `(B,)`; `y` the
        next-token ids `(B, T)`; `sample_weight` float32 `(B, T)`.

    Example:

    ```python
    preprocessor = keras_brt.data.BlockRecurrentTransformerCausalLMPreprocessor(
        keras_brt.data.ByteTokenizer(), sequence_length=128)
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM(backbone, preprocessor=preprocessor)
    lm.compile(optimizer="adam")
    lm.fit(["def f():\\n    return 1\\n", "import os\\n"], batch_size=2)
    lm.generate("def g(", max_length=40)
    ```
    """

    def __init__(self, tokenizer, sequence_length=1024, add_start_token=True, add_end_token=True,
                 **kwargs):
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        for name in ("pad_id", "bos_id", "eos_id", "vocabulary_size", "detokenize"):
            if not hasattr(tokenizer, name):
                raise ValueError(
                    f"`tokenizer` must be a keras_brt tokenizer (it has no `{name}`). "
                    f"Received: tokenizer={tokenizer!r}"
                )
        if isinstance(sequence_length, np.integer):
            sequence_length = sequence_length.item()
        check_positive_int("sequence_length", sequence_length)
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length
        self.add_start_token = add_start_token
        self.add_end_token = add_end_token

    def build(self, input_shape=None):
        self.built = True  # No weights; the tokenizer builds itself when first called.

    def __call__(self, x, y=None, sample_weight=None):
        # A tf.data layer: strings have no backend tensor type (see ByteTokenizer).
        if not self.built:
            self.build(None)
        return self.call(x, y, sample_weight)

    def _pack(self, x, length, add_end_token):
        """Ids `(B, length)` and their mask, from strings `(B,)`; the rank of `x` kept."""
        x = tf.convert_to_tensor(x, tf.string)
        scalar = x.shape.rank == 0
        ids = self.tokenizer(tf.reshape(x, [-1]))  # ragged (B, None)
        column = tf.stack([tf.cast(ids.nrows(), tf.int32), 1])  # [B, 1]
        pieces = [ids]
        if self.add_start_token:
            pieces.insert(0, tf.RaggedTensor.from_tensor(tf.fill(column, self.tokenizer.bos_id)))
        if add_end_token:
            pieces.append(tf.RaggedTensor.from_tensor(tf.fill(column, self.tokenizer.eos_id)))
        ids = tf.concat(pieces, axis=1)  # ragged (B, None)
        ids = ids[:, :length]
        mask = tf.ones_like(ids, tf.bool).to_tensor(False, shape=[None, length])
        ids = ids.to_tensor(self.tokenizer.pad_id, shape=[None, length])
        if scalar:
            return ids[0], mask[0]
        return ids, mask

    def call(self, x, y=None, sample_weight=None):
        if y is not None or sample_weight is not None:
            raise ValueError(
                "A causal LM's preprocessor makes the targets (the next tokens) and the weights "
                "(the padding mask) itself; give strings only. Received: "
                f"y={'given' if y is not None else None}, "
                f"sample_weight={'given' if sample_weight is not None else None}"
            )
        ids, mask = self._pack(x, self.sequence_length + 1, self.add_end_token)
        inputs = {
            "token_ids": ids[..., :-1],
            "padding_mask": mask[..., :-1],
            "start_of_sequence": tf.ones(tf.shape(ids)[:-1], tf.bool),
        }
        return inputs, ids[..., 1:], tf.cast(mask[..., 1:], tf.float32)

    def generate_preprocess(self, x, sequence_length=None):
        """`{"token_ids", "padding_mask"}` of prompts, with a BOS and no EOS, padded to
        `sequence_length` (default: the layer's)."""
        ids, mask = self._pack(x, sequence_length or self.sequence_length, add_end_token=False)
        return {"token_ids": ids, "padding_mask": mask}

    def generate_postprocess(self, x):
        """The texts of `{"token_ids", "padding_mask"}` (padding and special ids dropped):
        a string for one row, a list for a batch."""
        ids, mask = np.asarray(x["token_ids"]), np.asarray(x["padding_mask"], bool)
        if ids.ndim == 1:
            return self.tokenizer.detokenize(ids[mask])
        return [self.tokenizer.detokenize(row[keep]) for row, keep in zip(ids, mask)]

    def get_config(self):
        config = super().get_config()
        config.update({
            "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
            "sequence_length": self.sequence_length,
            "add_start_token": self.add_start_token,
            "add_end_token": self.add_end_token,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["tokenizer"] = keras.saving.deserialize_keras_object(config["tokenizer"])
        return cls(**config)


# === fit / evaluate / predict on strings ===


def is_string_data(x):
    """True for strings: a str, a list or NumPy array of str/bytes, or a tf.data
    dataset (or tensor) of strings. A dataset of tuples of strings raises a
    `ValueError` (strings are their own targets)."""
    if isinstance(x, (str, bytes)):
        return True
    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        if isinstance(spec, tuple) and spec and isinstance(spec[0], tf.TensorSpec) \
                and spec[0].dtype == tf.string:
            raise ValueError(
                "With a preprocessor, a dataset of strings yields the strings alone: they are "
                "their own targets (the next tokens). Received: a dataset of tuples with "
                f"element_spec={spec}"
            )
        return isinstance(spec, tf.TensorSpec) and spec.dtype == tf.string
    if isinstance(x, tf.Tensor):
        return x.dtype == tf.string
    if isinstance(x, (list, tuple)):
        return len(x) > 0 and all(isinstance(item, (str, bytes)) for item in x)
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "USO" and x.size > 0 and isinstance(x.reshape(-1)[0], (str, bytes))
    return False


def string_count(x):
    """How many strings `x` holds when they are in memory (a str, a list or an array of
    strings); None for anything else, datasets included."""
    if isinstance(x, (str, bytes)):
        return 1
    if isinstance(x, (list, tuple, np.ndarray)) and is_string_data(x):
        return int(np.asarray(x, dtype=object).size)
    return None


def _pad_rows(batch, rows):
    """A batch `(x, y, sample_weight)` given exactly `rows` rows: the missing ones are
    padding (weight 0, masked, starting a sequence) so that no row of data is dropped
    and the stateful model always sees its lanes' batch size."""
    def pad(tensor, value):
        tf.debugging.assert_less_equal(
            tf.shape(tensor)[0], rows,
            message=f"a batch of strings has more rows than the model's {rows} lanes")
        short = rows - tf.shape(tensor)[0]
        paddings = [[0, short]] + [[0, 0]] * (tensor.shape.rank - 1)
        padded = tf.pad(tensor, paddings, constant_values=value)
        return tf.ensure_shape(padded, [rows] + tensor.shape[1:].as_list())

    x, y, weight = batch
    x = {
        "token_ids": pad(x["token_ids"], 0),
        "padding_mask": pad(x["padding_mask"], False),
        "start_of_sequence": pad(x["start_of_sequence"], True),
    }
    return x, pad(y, 0), pad(weight, 0.0)


def string_dataset(preprocessor, x, batch_size=None, rows=None):
    """The tf.data pipeline that feeds strings `x` to a stateful causal LM.

    Lists and arrays of strings are batched by `rows` or `batch_size` (default
    32); a dataset of strings keeps its own batches (an unbatched one is batched
    likewise). Every batch is filled to `rows` rows (default: the first batch's)
    with padding rows of weight 0, since the model carries a fixed number of
    lanes: no string is dropped. (Keras's default loss reduction divides by every
    position, padding rows included, so a filled batch reports a smaller `loss`;
    the weighted metrics count real tokens only.)

    Args:
        preprocessor: a `BlockRecurrentTransformerCausalLMPreprocessor`.
        x: strings (see `is_string_data`).
        batch_size: rows per batch for unbatched strings.
        rows: the model's lanes, when it has them.

    Returns:
        A `tf.data.Dataset` of `(x, y, sample_weight)` with a static batch size.
    """
    if isinstance(x, (str, bytes)):
        x = [x]
    per_batch = rows or batch_size or 32
    if isinstance(x, tf.data.Dataset):
        dataset = x
        if dataset.element_spec.shape.rank == 0:
            dataset = dataset.batch(per_batch)
        elif batch_size is not None:
            raise ValueError(
                "A batched dataset sets its own batch size; do not pass `batch_size`. "
                f"Received: batch_size={batch_size}"
            )
        if rows is None:
            rows = dataset.element_spec.shape[0]
        if rows is None:  # The batch size of the first batch: every batch is filled to it.
            first = next(iter(dataset.take(1)), None)
            if first is None:
                raise ValueError("The dataset of strings is empty. Received: an empty dataset")
            rows = int(first.shape[0])
    else:
        strings = np.asarray(x, dtype=object).reshape(-1)
        dataset = tf.data.Dataset.from_tensor_slices(tf.constant(strings.tolist(), tf.string))
        dataset = dataset.batch(per_batch)
        rows = rows or min(per_batch, len(strings))
    dataset = dataset.map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.map(lambda *batch: _pad_rows(batch, rows)).prefetch(tf.data.AUTOTUNE)
