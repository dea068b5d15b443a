"""The non-recurrent BRT layer: sliding-window attention over all blocks at once."""

import keras
from keras import ops

from keras_brt.layers.attention import (
    attend,
    block_windows,
    extend_window,
    l2_normalize,
    window_mask,
)
from keras_brt.layers.common import (
    FeedForward,
    check_positive_int,
    check_rate,
    dense,
    resolve_head_dim,
    rms_norm,
    split_heads,
)
from keras_brt.layers.relative_position import RelativePositionBias


@keras.saving.register_keras_serializable(package="keras_brt")
class SlidingWindowTransformerLayer(keras.layers.Layer):
    """A pre-norm transformer layer whose tokens attend to the previous W tokens.

    The sequence is cut into blocks of `block_size` (W) tokens. Every block's
    queries attend to the keys of `[previous block ‖ this block]` with a
    strictly causal mask that keeps exactly the W tokens before each query (the
    token itself excluded, as in meliad) plus a T5 relative position bias. All
    blocks are computed at once: there is no loop. The previous block of the
    first block comes from the carried `prev_keys`/`prev_values` (an XL-style
    cache, zeros at the start of a document), and the last block's keys and
    values are returned for the next call. This is the layer of the paper's
    "Slide" and "XL" baselines and of every non-recurrent layer of the BRT.

    Attention follows meliad: queries and keys are L2-normalised per head, the
    logits are `|α_h| · (q̂·k̂ + bias)` with a learned per-head scale α
    (initialised to `attention_scale_init`), no 1/√K factor. Projections and the
    ReLU MLP have no biases. Dropout acts on the normalised input, on the
    attention probabilities and on the MLP output.

    Args:
        hidden_dim: int. Model width D.
        num_heads: int. Number of attention heads H.
        head_dim: int or None. Size K of each head; None means D // H.
        block_size: int. Block (and window) length W.
        intermediate_dim: int. MLP width; defaults to `4 * hidden_dim`.
        dropout: float. Dropout rate (the paper uses 0.05).
        relative_position_buckets: int. T5 buckets (32).
        relative_position_max_distance: int. T5 max distance (128).
        attention_scale_init: float. Initial per-head logit scale (1.0 in
            meliad, which relies on Adafactor to grow it; larger values train
            faster with Adam).
        reads_state: bool. The paper's feedback variant: the tokens also read a
            recurrent layer's state (cross-attention with its own query
            projection and scale, concatenated with the window's result before
            the output projection, as the recurrent layer's tokens do). The call
            then takes the state's `state_keys`/`state_values`.
        state_attention_scale_init: float. Initial logit scale of that read.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Call arguments:
        inputs: `(B, T, D)` with T a multiple of W.
        prev_keys: `(B, W, H, K)` normalised keys of the previous block.
        prev_values: `(B, W, H, K)` values of the previous block.
        state_keys, state_values: `(B, S, H, K)` the keys and values of the
            state the tokens read (`BlockRecurrentCell.state_keys_values`); only
            with `reads_state=True`, where every token of the call reads this one
            state (the backbone calls such a layer one block at a time).
        training: bool, enables dropout.

    Returns:
        `(outputs (B, T, D), keys (B, W, H, K), values (B, W, H, K))`: the layer
        output and the keys/values of the last block, to carry.

    Example:

    ```python
    layer = keras_brt.layers.SlidingWindowTransformerLayer(
        hidden_dim=64, num_heads=4, head_dim=16, block_size=8)
    keys, values = layer.get_initial_state(batch_size=2)
    y, keys, values = layer(x, keys, values)  # x: (2, 32, 64)
    ```
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        head_dim,
        block_size,
        intermediate_dim=None,
        dropout=0.0,
        relative_position_buckets=32,
        relative_position_max_distance=128,
        attention_scale_init=1.0,
        reads_state=False,
        state_attention_scale_init=1.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.head_dim = resolve_head_dim(hidden_dim, num_heads, head_dim)
        check_positive_int("block_size", block_size)
        check_positive_int("intermediate_dim", intermediate_dim, allow_none=True)
        check_rate("dropout", dropout)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.block_size = block_size
        self.intermediate_dim = intermediate_dim or 4 * hidden_dim
        self.dropout = dropout
        self.relative_position_buckets = relative_position_buckets
        self.relative_position_max_distance = relative_position_max_distance
        self.attention_scale_init = attention_scale_init
        self.reads_state = bool(reads_state)
        self.state_attention_scale_init = float(state_attention_scale_init)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if dropout > 0 else None
        self._window_mask = window_mask(block_size)

    def build(self, inputs_shape, prev_keys_shape=None, prev_values_shape=None,
              state_keys_shape=None, state_values_shape=None):
        if inputs_shape[-1] != self.hidden_dim:
            raise ValueError(
                f"The last axis of `inputs` must be hidden_dim={self.hidden_dim}. "
                f"Received: inputs.shape={inputs_shape}"
            )
        heads = self.num_heads * self.head_dim
        self.norm = rms_norm("norm", self.dtype_policy)
        self.norm.build(inputs_shape)
        self.qkv_dense = dense(3 * heads, "qkv_dense", self.dtype_policy, self.hidden_dim)
        reads = 2 if self.reads_state else 1  # the window's heads, then the state's
        self.output_dense = dense(self.hidden_dim, "output_dense", self.dtype_policy, reads * heads)
        if self.reads_state:
            self.state_query_dense = dense(heads, "state_query_dense", self.dtype_policy,
                                           self.hidden_dim)
            self.state_scale = self.add_weight(
                shape=(self.num_heads,),
                initializer=keras.initializers.Constant(self.state_attention_scale_init),
                name="state_scale",
            )
        self.relative_position = RelativePositionBias(
            self.num_heads,
            num_buckets=self.relative_position_buckets,
            max_distance=self.relative_position_max_distance,
            dtype=self.dtype_policy,
            name="relative_position",
        )
        self.relative_position.build()
        self.attention_scale = self.add_weight(
            shape=(self.num_heads,),
            initializer=keras.initializers.Constant(self.attention_scale_init),
            name="attention_scale",
        )
        self.input_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.feed_forward = FeedForward(
            self.hidden_dim,
            self.intermediate_dim,
            dropout=self.dropout,
            dtype=self.dtype_policy,
            name="feed_forward",
        )
        self.feed_forward.build(inputs_shape)

    def get_initial_state(self, batch_size):
        """Returns `[keys, values]` of zeros `(B, W, H, K)`: an empty cache."""
        shape = (batch_size, self.block_size, self.num_heads, self.head_dim)
        return [ops.zeros(shape, self.compute_dtype), ops.zeros(shape, self.compute_dtype)]

    def window_bias(self):
        """The `(H, W, 2W)` relative position bias of one block's window."""
        w = self.block_size
        return self.relative_position.contiguous(w, w, 0, 2 * w)

    def attention_dropout_mask(self, training):
        """A `(H, W, 2W)` dropout mask shared by all rows and blocks (meliad)."""
        if not training or self.dropout == 0:
            return None
        w = self.block_size
        ones = ops.ones((self.num_heads, w, 2 * w), "float32")
        return keras.random.dropout(ones, self.dropout, seed=self.seed_generator)

    def call(self, inputs, prev_keys, prev_values, state_keys=None, state_values=None,
             training=False):
        self._check_state(state_keys, state_values)
        w, h, k = self.block_size, self.num_heads, self.head_dim
        batch, length = ops.shape(inputs)[0], inputs.shape[1]
        if length is not None and length % w:
            raise ValueError(
                f"The length of `inputs` must be a multiple of block_size={w}. "
                f"Received: inputs.shape={inputs.shape}"
            )
        num_blocks = ops.shape(inputs)[1] // w
        x = self.input_dropout(self.norm(inputs), training=training)  # (B, T, D)
        q, keys, values = split_heads(self.qkv_dense(x), 3, h, k)  # 3 × (B, T, H, K)
        q, keys = l2_normalize(q), l2_normalize(keys)
        keys = ops.reshape(keys, (batch, num_blocks, w, h, k))  # (B, N, W, H, K)
        values = ops.reshape(values, (batch, num_blocks, w, h, k))  # (B, N, W, H, K)
        # Block n reads [block n-1 ‖ block n]; block 0 reads the carried cache.
        window_k = ops.reshape(block_windows(prev_keys, keys), (-1, 2 * w, h, k))  # (B*N, 2W, H, K)
        window_v = ops.reshape(block_windows(prev_values, values), (-1, 2 * w, h, k))  # (B*N, 2W, H, K)
        attended = attend(
            ops.reshape(q, (-1, w, h, k)),  # (B*N, W, H, K)
            window_k,
            window_v,
            self.attention_scale,
            bias=self.window_bias(),
            mask=ops.convert_to_tensor(self._window_mask),
            dropout_mask=self.attention_dropout_mask(training),
        )  # (B*N, W, H, K)
        attended = ops.reshape(attended, (batch, -1, h * k))  # (B, T, H*K)
        attended = self._read_state(x, attended, state_keys, state_values)  # (B, T, {1,2}·H*K)
        return self._residual(inputs, attended, training), keys[:, -1], values[:, -1]

    def _check_state(self, state_keys, state_values):
        if self.reads_state and (state_keys is None or state_values is None):
            raise ValueError(
                f"Layer {self.name!r} has reads_state=True: pass the state's `state_keys` and "
                f"`state_values`. Received: state_keys={type(state_keys).__name__}, "
                f"state_values={type(state_values).__name__}"
            )
        if not self.reads_state and state_keys is not None:
            raise ValueError(
                f"Layer {self.name!r} has reads_state=False and takes no `state_keys`. "
                f"Received: state_keys.shape={tuple(state_keys.shape)}"
            )

    def _read_state(self, x, attended, state_keys, state_values):
        """Feedback: every token also reads the state (no mask, no bias); the result is
        concatenated after the window's heads. Returns `attended` unchanged otherwise."""
        if not self.reads_state:
            return attended
        h, k = self.num_heads, self.head_dim
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        queries = ops.reshape(self.state_query_dense(x), (batch, length, h, k))  # (B, T, H, K)
        read = attend(l2_normalize(queries), state_keys, state_values, self.state_scale)  # (B, T, H, K)
        read = ops.reshape(read, (batch, length, h * k))  # (B, T, H*K)
        return ops.concatenate([attended, read], axis=-1)  # (B, T, 2·H*K)

    def _residual(self, inputs, attended, training=False):
        outputs = inputs + self.output_dense(attended)  # (B, T, D)
        return outputs + self.feed_forward(outputs, training=training)  # (B, T, D)

    def decode(self, inputs, index, prev_keys, prev_values, keys, values,
               state_keys=None, state_values=None):
        """One token per row `(B, 1, D)` at block position `index` (a scalar),
        reading the previous block's and the current block's cached keys/values
        `(B, W, H, K)` (and, with `reads_state`, the state's keys/values); as
        `BlockRecurrentCell.decode`, without a state of its own.

        Returns `(outputs (B, 1, D), keys, values)`, the token's key and value
        written at `index`; equal to the block call's output at that position.
        """
        self._check_state(state_keys, state_values)
        w, h, k = self.block_size, self.num_heads, self.head_dim
        x = self.norm(inputs)  # (B, 1, D)
        q, key, value = split_heads(self.qkv_dense(x), 3, h, k)  # 3 × (B, 1, H, K)
        q, key = l2_normalize(q), l2_normalize(key)
        keys, values, window_keys, window_values, mask = extend_window(
            prev_keys, prev_values, keys, values, key, value, index
        )  # 2 × (B, W, H, K), 2 × (B, 2W, H, K), (1, 2W)
        attended = attend(
            q,
            window_keys,
            window_values,
            self.attention_scale,
            bias=self.relative_position(ops.reshape(index + w, (1,)), ops.arange(0, 2 * w)),
            mask=mask,
        )  # (B, 1, H, K)
        attended = ops.reshape(attended, (ops.shape(inputs)[0], 1, h * k))  # (B, 1, H*K)
        attended = self._read_state(x, attended, state_keys, state_values)  # (B, 1, {1,2}·H*K)
        return self._residual(inputs, attended), keys, values

    def compute_output_shape(self, inputs_shape, prev_keys_shape=None, prev_values_shape=None,
                             state_keys_shape=None, state_values_shape=None):
        cache = (inputs_shape[0], self.block_size, self.num_heads, self.head_dim)
        return inputs_shape, cache, cache

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "head_dim": self.head_dim,
                "block_size": self.block_size,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "relative_position_buckets": self.relative_position_buckets,
                "relative_position_max_distance": self.relative_position_max_distance,
                "attention_scale_init": self.attention_scale_init,
                "reads_state": self.reads_state,
                "state_attention_scale_init": self.state_attention_scale_init,
                "seed": self.seed,
            }
        )
        return config
