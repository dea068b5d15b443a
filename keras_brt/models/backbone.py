"""The Block-Recurrent Transformer backbone: embeddings, the layer stack, final norm."""

import keras
import numpy as np
from keras import ops

from keras_brt.layers.block_recurrent_cell import (
    STATE_MLPS,
    BlockRecurrentCell,
    check_scale_init,
    initial_state_scale,
)
from keras_brt.layers.block_recurrent_rnn import BlockRecurrentRNN
from keras_brt.layers.common import (
    check_choice,
    check_positive_int,
    check_rate,
    resolve_head_dim,
    rms_norm,
)
from keras_brt.layers.gates import GATES, check_bias_init
from keras_brt.layers.sliding_window_layer import SlidingWindowTransformerLayer
from keras_brt.models.presets import get_preset
from keras_brt.models.state_layout import StateLayout, entry


def concrete_value(x):
    """Returns `x` as a numpy array when it holds real values, None while tracing."""
    if x is None or isinstance(x, np.ndarray):
        return x
    try:
        return ops.convert_to_numpy(x)
    except Exception:  # A tracer or a symbolic tensor: no values to check.
        return None


# The Dense layers `enable_lora` targets by default: every attention's fused Q/K/V projection.
LORA_TARGETS = ("qkv_dense", "token_qkv_dense", "state_qkv_dense", "state_query_dense")

# Recurrent layers unroll their loop over blocks for calls of at most this many
# blocks (static lengths): faster to run, one compiled copy of the step per block.
UNROLL_MAX_BLOCKS = 16


@keras.saving.register_keras_serializable(package="keras_brt")
class BlockRecurrentTransformerBackbone(keras.Model):
    """Decoder-only Block-Recurrent Transformer stack with an explicit carried state.

    Token embeddings (N(0, 1), tied with the output layer by the causal LM) go
    through `num_layers` pre-norm layers and a final RMS norm. Every layer reads
    a sliding window of the previous `block_size` tokens with an XL-style cache
    of the previous block's keys and values; the layers listed in
    `recurrent_layers` also carry `num_state_vectors` state vectors through a
    `BlockRecurrentCell` run by `keras.layers.RNN` over the blocks (unrolled
    for calls of at most `UNROLL_MAX_BLOCKS` = 16 blocks). The other layers
    compute every block at once (no loop).

    With `recurrent_layers=()` the same class is the paper's "Slide:L"
    baseline (and the "XL:n" baseline with `block_size=n` and segments of n
    tokens), so the baselines share all code with the recurrent model.

    The carried state is a flat dict of tensors: `layer_{i}_keys` and
    `layer_{i}_values` `(B, W, H, K)` for every layer and `layer_{i}_state`
    `(B, S, D)` for every recurrent layer, described by `state_layout`
    (`keras_brt.models.state_layout`).

    Args:
        vocabulary_size: int. Number of token ids V.
        num_layers: int. Number of layers L.
        hidden_dim: int. Model width D.
        num_heads: int. Attention heads H.
        head_dim: int or None. Head size K (None: D // H).
        intermediate_dim: int or None. MLP width (None: 4 * D).
        block_size: int. Block and window length W.
        num_state_vectors: int. State vectors S per recurrent layer.
        recurrent_layers: tuple of 0-based layer indices, negatives allowed;
            `()` gives the Slide/XL baselines.
        gate: `"fixed"` or `"lstm"`.
        state_mlp: `"skip"`, `"single"` or `"dual"`.
        dropout: float. Dropout of the token path (the paper uses 0.05).
        relative_position_buckets: int. T5 buckets (32).
        relative_position_max_distance: int. T5 max distance (128).
        attention_scale_init: float. Initial per-head logit scale (meliad 1.0).
        state_attention_scale_init: `"auto"` (default), float or None. Initial
            logit scale of the recurrent layers' state attentions: `"auto"` is
            `log2(n² - n)` for the n keys each reads; None is
            `attention_scale_init` (the paper's setting). See `BlockRecurrentCell`.
        gate_bias_init: float. Mean of the state gate's keep bias at
            initialisation: 2.0 (default) starts the fixed gate at 0.88, the
            paper's 0.0 at 0.5, which forgets too fast for the state to learn;
            `"chrono"` spreads the memories from 2 to 64 blocks. See
            `BlockRecurrentCell`.
        feedback: bool. The paper's "Feedback" variant (default False): every
            other layer also reads the recurrent layer's state, so the state is
            used, and receives gradient, in every layer. The whole stack then runs
            one block at a time (each layer on block t before block t + 1), which
            needs a sequence length known when tracing and costs step time (the
            paper measured +35-40%). Needs exactly one recurrent layer.
        **kwargs: base model arguments such as `name` and `dtype`.

    Call arguments:
        token_ids: int `(B, T)`. Any T; T that is not a multiple of W is padded
            internally with null tokens and the outputs are cut back to T.
        state: optional carried-state dict (default: `initial_state(B)`).
        start_of_sequence: optional bool `(B,)`; true rows start from the
            initial state whatever `state` holds.
        padding_mask: optional bool/int `(B, T)`; false positions are null
            tokens: in every layer their keys and values are zero, exactly like
            the empty cache at a document start, so what they hold never
            matters. Their outputs are meaningless; mask them in the loss.
        training: bool, enables dropout.

    Returns:
        `(hidden (B, T, D), new_state)`.

    Example:

    ```python
    backbone = keras_brt.models.BlockRecurrentTransformerBackbone(
        vocabulary_size=264, num_layers=2, hidden_dim=64, num_heads=4,
        head_dim=16, intermediate_dim=256, block_size=8, num_state_vectors=8,
        recurrent_layers=(-1,))
    hidden, state = backbone(token_ids)
    hidden2, state = backbone(next_token_ids, state=state)
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        hidden_dim,
        num_heads,
        head_dim,
        intermediate_dim,
        block_size=512,
        num_state_vectors=512,
        recurrent_layers=(-3,),
        gate="fixed",
        state_mlp="skip",
        dropout=0.0,
        relative_position_buckets=32,
        relative_position_max_distance=128,
        attention_scale_init=1.0,
        state_attention_scale_init="auto",
        gate_bias_init=2.0,
        feedback=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("vocabulary_size", vocabulary_size)
        check_positive_int("num_layers", num_layers)
        self.head_dim = resolve_head_dim(hidden_dim, num_heads, head_dim)
        check_positive_int("intermediate_dim", intermediate_dim, allow_none=True)
        check_positive_int("block_size", block_size)
        check_positive_int("num_state_vectors", num_state_vectors)
        check_rate("dropout", dropout)
        check_choice("gate", gate, GATES)
        check_choice("state_mlp", state_mlp, STATE_MLPS)
        check_scale_init("state_attention_scale_init", state_attention_scale_init)
        check_bias_init("gate_bias_init", gate_bias_init)
        if isinstance(recurrent_layers, int) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in recurrent_layers
        ):
            raise ValueError(
                "`recurrent_layers` must be a tuple of int layer indices. "
                f"Received: recurrent_layers={recurrent_layers!r}"
            )
        resolved = []
        for index in recurrent_layers:
            if not -num_layers <= index < num_layers:
                raise ValueError(
                    f"`recurrent_layers` indices must lie in [-{num_layers}, {num_layers}) "
                    f"for num_layers={num_layers}. Received: recurrent_layers={recurrent_layers!r}"
                )
            resolved.append(index % num_layers)
        if len(set(resolved)) != len(resolved):
            raise ValueError(
                "`recurrent_layers` names the same layer twice. "
                f"Received: recurrent_layers={recurrent_layers!r} (num_layers={num_layers})"
            )
        if feedback and len(resolved) != 1:
            raise ValueError(
                "`feedback=True` needs exactly one recurrent layer (the state every layer "
                f"reads). Received: recurrent_layers={recurrent_layers!r}"
            )
        self.feedback = bool(feedback)
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim or 4 * hidden_dim
        self.block_size = block_size
        self.num_state_vectors = num_state_vectors
        self.recurrent_layers = tuple(recurrent_layers)
        self.recurrent_layer_indices = tuple(sorted(resolved))
        self.gate = gate
        self.state_mlp = state_mlp
        self.dropout = dropout
        self.relative_position_buckets = relative_position_buckets
        self.relative_position_max_distance = relative_position_max_distance
        self.attention_scale_init = attention_scale_init
        self.state_attention_scale_init = state_attention_scale_init
        self.gate_bias_init = gate_bias_init
        # Names and shapes of the carried state (a plain object, not tracked by Keras).
        self.state_layout = StateLayout(num_layers, self.recurrent_layer_indices, block_size,
                                        num_heads, self.head_dim, num_state_vectors, hidden_dim)

    # === Layers ===

    def build(self, token_ids_shape=None):
        if self.built:
            return
        dtype = self.dtype_policy
        hidden_shape = (None, None, self.hidden_dim)
        self.token_embedding = keras.layers.Embedding(
            self.vocabulary_size,
            self.hidden_dim,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
            dtype=dtype,
            name="token_embedding",
        )
        self.token_embedding.build((None, None))
        common = dict(
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            block_size=self.block_size,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
            relative_position_buckets=self.relative_position_buckets,
            relative_position_max_distance=self.relative_position_max_distance,
            attention_scale_init=self.attention_scale_init,
            dtype=dtype,
        )
        self.transformer_layers = []
        for i in range(self.num_layers):
            if i in self.recurrent_layer_indices:
                cell = BlockRecurrentCell(
                    num_state_vectors=self.num_state_vectors,
                    gate=self.gate,
                    state_mlp=self.state_mlp,
                    state_attention_scale_init=self.state_attention_scale_init,
                    gate_bias_init=self.gate_bias_init,
                    name=f"recurrent_cell_{i}",
                    **common,
                )
                layer = BlockRecurrentRNN(
                    cell,
                    return_state=True,
                    unroll=UNROLL_MAX_BLOCKS,
                    dtype=dtype,
                    name=f"recurrent_layer_{i}",
                )
            else:
                layer = SlidingWindowTransformerLayer(
                    name=f"transformer_layer_{i}",
                    reads_state=self.feedback,
                    state_attention_scale_init=initial_state_scale(  # as the cell's tokens
                        self.state_attention_scale_init, self.attention_scale_init,
                        self.num_state_vectors),
                    **common,
                )
            layer.build(hidden_shape)
            self.transformer_layers.append(layer)
        self.final_norm = rms_norm("final_norm", dtype)
        self.final_norm.build(hidden_shape)
        self.final_dropout = keras.layers.Dropout(self.dropout, dtype=dtype, name="final_dropout")
        self.built = True

    # === Tied output embeddings, LoRA ===

    def output_embeddings(self, dtype=None):
        """The `(V, D)` embedding matrix the tied output layer reads, in `dtype`: the
        float matrix (with its LoRA update, if enabled), or the dequantized one after
        `quantize("int8")` (int8 values divided by their per-row scales, as the
        embedding lookup does)."""
        layer = self.token_embedding
        dtype = dtype or self.compute_dtype
        mode = layer.quantization_mode
        if mode is None:
            return ops.cast(layer.embeddings, dtype)  # (V, D)
        if mode == "int8" and not layer.lora_enabled:
            scale = ops.cast(layer.embeddings_scale, dtype)  # (V,)
            return ops.cast(layer.embeddings, dtype) / scale[:, None]  # (V, D)
        raise ValueError(
            "The tied output layer supports float or int8 token embeddings without LoRA. "
            f"Received: quantization_mode={mode!r}, lora_enabled={layer.lora_enabled}"
        )

    def enable_lora(self, rank, target_layer_names=None):
        """Freezes every weight, then adds trainable rank-`rank` LoRA factors to the
        Dense layers named in `target_layer_names`, as KerasHub's `Backbone.enable_lora`.

        Args:
            rank: int, the rank of the LoRA update.
            target_layer_names: names of Dense layers; default `LORA_TARGETS`, the
                attention's fused query/key/value projections of every layer (and,
                with feedback, their queries of the state).
        """
        check_positive_int("rank", rank)
        self.build()
        names = LORA_TARGETS if target_layer_names is None else tuple(target_layer_names)
        layers = list(self._flatten_layers(include_self=False))
        targets = [layer for layer in layers if layer.name in names and hasattr(layer, "enable_lora")]
        if not targets:
            raise ValueError(
                "`target_layer_names` names no Dense layer of this backbone. Received: "
                f"target_layer_names={target_layer_names!r}"
            )
        for layer in layers:
            layer.trainable = False
        for layer in targets:
            layer.trainable = True
            layer.enable_lora(rank)

    # === Carried state ===

    def state_shapes(self, batch_size):
        """Returns `{name: shape}` of the carried state for `batch_size` lanes
        (`self.state_layout.shapes`)."""
        return self.state_layout.shapes(batch_size)

    def initial_state(self, batch_size):
        """The state of `batch_size` fresh lanes: empty caches and learned initial states."""
        self.build()
        state = {}
        for i, layer in enumerate(self.transformer_layers):
            values = layer.cell.get_initial_state(batch_size) if self._is_recurrent(i) else (
                [None] + layer.get_initial_state(batch_size)
            )
            if values[0] is not None:
                state[entry(i, "state")] = values[0]
            state[entry(i, "keys")], state[entry(i, "values")] = values[1], values[2]
        return state

    def _is_recurrent(self, index):
        return self.state_layout.is_recurrent(index)

    def _check_inputs(self, token_ids, state, start_of_sequence, padding_mask):
        if len(token_ids.shape) != 2:
            raise ValueError(
                f"`token_ids` must have shape (batch, length). Received: token_ids.shape="
                f"{tuple(token_ids.shape)}"
            )
        if "int" not in keras.backend.standardize_dtype(token_ids.dtype):
            raise ValueError(
                "`token_ids` must be an integer tensor. Received: token_ids.dtype="
                f"{keras.backend.standardize_dtype(token_ids.dtype)}"
            )
        if token_ids.shape[1] == 0 or token_ids.shape[0] == 0:
            raise ValueError(
                "`token_ids` must hold at least one row and one token. Received: token_ids.shape="
                f"{tuple(token_ids.shape)}"
            )
        ids = concrete_value(token_ids)
        if ids is not None and ids.size and (ids.min() < 0 or ids.max() >= self.vocabulary_size):
            bad = ids[(ids < 0) | (ids >= self.vocabulary_size)]
            raise ValueError(
                f"`token_ids` must lie in [0, vocabulary_size={self.vocabulary_size}). "
                f"Received ids outside it, e.g. token_ids={bad[:5].tolist()}"
            )
        batch, length = token_ids.shape
        if start_of_sequence is not None:
            shape = tuple(start_of_sequence.shape)
            if len(shape) != 1 or None not in (batch, shape[0]) and shape[0] != batch:
                raise ValueError(
                    f"`start_of_sequence` must have shape (batch,) = ({batch},). "
                    f"Received: start_of_sequence.shape={shape}"
                )
        if padding_mask is not None and (
            len(padding_mask.shape) != 2
            or any(a is not None and b is not None and a != b
                   for a, b in zip(padding_mask.shape, token_ids.shape))
        ):
            raise ValueError(
                f"`padding_mask` must have the shape of token_ids {tuple(token_ids.shape)}. "
                f"Received: padding_mask.shape={tuple(padding_mask.shape)}"
            )
        if state is None:
            return
        if not isinstance(state, dict) or set(state) != set(self.state_shapes(batch)):
            received = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"`state` must be a dict with keys {sorted(self.state_shapes(batch))} (see "
                f"initial_state()). Received: state keys={received}"
            )
        for name, expected in self.state_shapes(batch).items():
            shape = tuple(state[name].shape)
            if len(shape) != len(expected) or any(
                a is not None and b is not None and a != b for a, b in zip(shape, expected)
            ):
                raise ValueError(
                    f"`state['{name}']` must have shape {expected} (batch of token_ids first). "
                    f"Received: state['{name}'].shape={shape}"
                )

    # === Forward ===

    def call(
        self,
        token_ids,
        state=None,
        start_of_sequence=None,
        padding_mask=None,
        training=False,
    ):
        self._check_inputs(token_ids, state, start_of_sequence, padding_mask)
        batch = ops.shape(token_ids)[0]
        length = token_ids.shape[1]
        initial = self.initial_state(batch)
        if state is None:
            state = initial
        elif start_of_sequence is not None:
            reset = ops.cast(start_of_sequence, "bool")
            state = {
                name: ops.where(
                    ops.reshape(reset, (-1,) + (1,) * (len(value.shape) - 1)),
                    ops.cast(initial[name], value.dtype),
                    value,
                )
                for name, value in state.items()
            }

        # Pad to whole blocks with null tokens; cut the outputs back at the end.
        # A length unknown while tracing (an exported signature) pads by a
        # computed amount, possibly zero.
        if length is None:
            length = ops.shape(token_ids)[1]
        pad = (-length) % self.block_size
        if not isinstance(pad, int) or pad:
            if padding_mask is None:
                padding_mask = ops.ones_like(token_ids, "bool")
            token_ids = ops.pad(token_ids, ((0, 0), (0, pad)))
            padding_mask = ops.pad(ops.cast(padding_mask, "bool"), ((0, 0), (0, pad)))
        keep = None if padding_mask is None else ops.cast(padding_mask, self.compute_dtype)[..., None]

        # Out-of-vocabulary ids cannot raise inside a compiled function: their
        # rows come out as NaN instead of silently reading a clamped embedding.
        in_vocab = ops.all(
            ops.logical_and(token_ids >= 0, token_ids < self.vocabulary_size), axis=1
        )  # (B,)
        x = self.token_embedding(token_ids)  # (B, T, D)
        if self.feedback:
            x, new_state = self._feedback_stack(x, state, keep, training)
        else:
            x, new_state = self._layer_stack(x, state, keep, training)
        x = self.final_dropout(self.final_norm(x), training=training)  # (B, T, D)
        x = ops.where(in_vocab[:, None, None], x, ops.cast(float("nan"), x.dtype))
        if not isinstance(pad, int) or pad:
            x = x[:, :length]
        return x, new_state

    def _layer_stack(self, x, state, keep, training):
        """Layer by layer, each over the whole call: the recurrent layers loop over the
        blocks, the others compute every block at once."""
        new_state = {}
        for i, layer in enumerate(self.transformer_layers):
            if keep is not None:
                x = x * keep  # Null tokens: zero keys and values in this layer.
            keys, values = state[entry(i, "keys")], state[entry(i, "values")]
            if self._is_recurrent(i):
                x, s, keys, values = layer(
                    x, initial_state=[state[entry(i, "state")], keys, values], training=training
                )
                new_state[entry(i, "state")] = s
            else:
                x, keys, values = layer(x, keys, values, training=training)
            new_state[entry(i, "keys")], new_state[entry(i, "values")] = keys, values
        return x, new_state

    def _feedback_stack(self, x, state, keep, training):
        """Block by block, every layer on block t before block t + 1: each layer reads the
        state S_t the recurrent layer carries into block t, which it then updates to S_t+1."""
        w, length = self.block_size, x.shape[1]
        if length is None:
            raise ValueError(
                "`feedback=True` runs the stack one block at a time and needs a sequence length "
                f"known when tracing. Received: token_ids.shape={tuple(x.shape[:2])}"
            )
        r = self.recurrent_layer_indices[0]
        new_state = dict(state)
        outputs = []
        for start in range(0, length, w):
            h = x[:, start:start + w]  # (B, W, D)
            vectors = new_state[entry(r, "state")]  # (B, S, D): S_t, read by every layer
            state_keys, state_values = self.transformer_layers[r].cell.state_keys_values(
                ops.cast(vectors, self.compute_dtype)
            )  # 2 × (B, S, H, K)
            for i, layer in enumerate(self.transformer_layers):
                if keep is not None:
                    h = h * keep[:, start:start + w]  # Null tokens: zero keys and values.
                keys, values = new_state[entry(i, "keys")], new_state[entry(i, "values")]
                if i == r:
                    h, vectors, keys, values = layer(
                        h, initial_state=[vectors, keys, values], training=training
                    )  # (B, W, D), (B, S, D), 2 × (B, W, H, K)
                    new_state[entry(i, "state")] = vectors
                else:
                    h, keys, values = layer(h, keys, values, state_keys, state_values,
                                            training=training)  # (B, W, D), 2 × (B, W, H, K)
                new_state[entry(i, "keys")], new_state[entry(i, "values")] = keys, values
            outputs.append(h)
        return ops.concatenate(outputs, axis=1), new_state  # (B, T, D)

    # === Decoding: one token at a time ===

    def decode_cache(self, state):
        """The decoding cache for a carried `state` taken at a block boundary.

        Per layer: the previous block's keys/values (`prev_keys`, `prev_values`),
        the current block's so far (`keys`, `values`, filled as tokens come) and,
        for recurrent layers, the state with its keys/values (`state`,
        `state_keys`, `state_values`). Its size is fixed: W tokens and S state
        vectors per layer, however long the text.
        """
        cache = {}
        for i, layer in enumerate(self.transformer_layers):
            keys, values = state[entry(i, "keys")], state[entry(i, "values")]
            cache[entry(i, "prev_keys")], cache[entry(i, "prev_values")] = keys, values
            cache[entry(i, "keys")] = ops.zeros_like(keys)
            cache[entry(i, "values")] = ops.zeros_like(values)
            if self._is_recurrent(i):
                vectors = state[entry(i, "state")]
                cache[entry(i, "state")] = vectors
                (cache[entry(i, "state_keys")],
                 cache[entry(i, "state_values")]) = layer.cell.state_keys_values(vectors)
        return cache

    def decode_step(self, token_ids, index, cache):
        """Runs one token per row through every layer.

        Args:
            token_ids: int `(B,)`, the tokens at position `index` of the block.
            index: int scalar, the position inside the current block.
            cache: from `decode_cache()` or a previous `decode_step()`.

        Returns:
            `(hidden (B, D), cache)`. After the block's last position the cache
            moves on to the next block: every recurrent layer's state advances
            exactly as in `call`, and the block's keys/values become the window.
        """
        x = self.token_embedding(token_ids[:, None])  # (B, 1, D)
        new = dict(cache)
        for i, layer in enumerate(self.transformer_layers):
            window = [cache[entry(i, n)] for n in ("prev_keys", "prev_values", "keys", "values")]
            if self._is_recurrent(i):
                x, keys, values = layer.cell.decode(
                    x, index, cache[entry(i, "state")], cache[entry(i, "state_keys")],
                    cache[entry(i, "state_values")], *window,
                )  # (B, 1, D), 2 × (B, W, H, K)
            elif self.feedback:  # the state this block reads, as in call
                r = self.recurrent_layer_indices[0]
                x, keys, values = layer.decode(
                    x, index, *window, cache[entry(r, "state_keys")], cache[entry(r, "state_values")]
                )  # (B, 1, D), 2 × (B, W, H, K)
            else:
                x, keys, values = layer.decode(x, index, *window)  # (B, 1, D), 2 × (B, W, H, K)
            new[entry(i, "keys")], new[entry(i, "values")] = keys, values
        hidden = self.final_norm(x)[:, 0]  # (B, D)

        def next_block():
            moved = dict(new)
            for i, layer in enumerate(self.transformer_layers):
                keys, values = new[entry(i, "keys")], new[entry(i, "values")]
                if self._is_recurrent(i):
                    vectors = layer.cell.advance_state(
                        new[entry(i, "state")], new[entry(i, "prev_keys")],
                        new[entry(i, "prev_values")], keys, values,
                    )  # (B, S, D)
                    moved[entry(i, "state")] = ops.cast(vectors, new[entry(i, "state")].dtype)
                    (moved[entry(i, "state_keys")],
                     moved[entry(i, "state_values")]) = layer.cell.state_keys_values(vectors)
                moved[entry(i, "prev_keys")], moved[entry(i, "prev_values")] = keys, values
            return moved

        return hidden, ops.cond(index == self.block_size - 1, next_block, lambda: new)

    def compute_output_spec(self, token_ids, state=None, **kwargs):
        batch, length = token_ids.shape
        hidden = keras.KerasTensor((batch, length, self.hidden_dim), dtype=self.compute_dtype)
        states = {
            name: keras.KerasTensor(shape, dtype=self.compute_dtype)
            for name, shape in self.state_shapes(batch).items()
        }
        return hidden, states

    # === Presets and config ===

    @classmethod
    def from_preset(cls, preset, load_weights=True, **overrides):
        """Builds a backbone from a named architecture preset (see `presets`), or loads
        the one saved by `save_to_preset` (of a backbone or a causal LM) in a folder.

        Args:
            preset: a name from `BlockRecurrentTransformerBackbone.presets`, a
                preset folder, or an `hf://` / `kaggle://` handle of one (see
                `keras_brt.models.preset_io.local_preset`).
            load_weights: for a folder, whether to load its weights.
            **overrides: config values to change, e.g. `vocabulary_size=260`
                (named presets only).
        """
        from keras_brt.models import preset_io

        preset = preset_io.local_preset(preset)
        if preset_io.is_preset_folder(preset):
            return preset_io.load_preset(cls, preset, load_weights, overrides)
        config = dict(get_preset(preset)["config"])
        unknown = set(overrides) - set(config) - {
            "relative_position_buckets", "relative_position_max_distance",
            "attention_scale_init", "state_attention_scale_init", "gate_bias_init", "feedback",
            "name", "dtype",
        }
        if unknown:
            raise ValueError(
                f"Unknown override for preset {preset!r}: {sorted(unknown)}. "
                f"Valid: {sorted(config)}"
            )
        config.update(overrides)
        return cls(**config)

    def save_to_preset(self, preset_dir):
        """Writes the backbone to the folder `preset_dir`: `config.json`,
        `model.weights.h5` and `metadata.json` (KerasHub's preset layout)."""
        from keras_brt.models import preset_io

        preset_io.save_to_preset(self, self, preset_dir)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
            "intermediate_dim": self.intermediate_dim,
            "block_size": self.block_size,
            "num_state_vectors": self.num_state_vectors,
            "recurrent_layers": list(self.recurrent_layers),
            "gate": self.gate,
            "state_mlp": self.state_mlp,
            "dropout": self.dropout,
            "relative_position_buckets": self.relative_position_buckets,
            "relative_position_max_distance": self.relative_position_max_distance,
            "attention_scale_init": self.attention_scale_init,
            "state_attention_scale_init": self.state_attention_scale_init,
            "gate_bias_init": self.gate_bias_init,
            "feedback": self.feedback,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "dtype" in config and isinstance(config["dtype"], dict):
            config["dtype"] = keras.saving.deserialize_keras_object(config["dtype"])
        config["recurrent_layers"] = tuple(config.get("recurrent_layers", (-3,)))
        return cls(**config)


def _preset_names():
    from keras_brt.models.presets import PRESETS

    return tuple(sorted(PRESETS))


BlockRecurrentTransformerBackbone.presets = _preset_names()
