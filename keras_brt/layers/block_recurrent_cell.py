"""The Block-Recurrent Transformer cell (Hutchins et al., NeurIPS 2022).

One RNN step processes one block of W tokens and a set of S state vectors:

    tokens (vertical):   [self-attention over prev‖current block ‖ cross-attention to states]
                         → one output projection → residual → MLP → residual
    states (horizontal): [self-attention over states ‖ cross-attention to prev‖current block]
                         → state MLP ("skip" | "single" | "dual") → gate ("fixed" | "lstm")

Keys and values are shared by the two directions (tokens have one K/V set, states
have one); there are four query projections. This file follows the official code,
google-research/meliad, wherever the two public implementations differ:

- the token window is strictly causal and excludes the token itself: each query
  reads exactly the W tokens before it (lucidrains includes the token);
- queries and keys are L2-normalised per head with a learned per-head scale |α|
  (initialised to 1.0), no 1/√K factor, the T5 bias added before the scale;
- states read both blocks (prev‖current), with no mask and no position bias, and
  the state path has no dropout;
- the fixed gate is g = σ(b), new = g ⊙ old + (1 - g) ⊙ update (g weights the old
  state), b ~ N(0, 0.1); the LSTM gate adds +1 / -1 to the forget / input biases;
- learned state IDs N(0, 1) are added after the state norm; the learned initial
  state is N(0, 0.1).

It departs from the paper in one place, the state's initialisation, because with
the paper's the state learns almost nothing under Adam at small scale (see
bench/results/NOTES.md, "Making the state learn"): the keep gate's bias starts at
N(2.0, 0.1) instead of N(0, 0.1) (`gate_bias_init`) and the state's three
attention scales at log2(n² - n) for their n keys instead of 1.0
(`state_attention_scale_init="auto"`). `gate_bias_init=0.0,
state_attention_scale_init=None` is the paper's setting.

Size glossary: B batch, W block size, S state vectors, D hidden size, H heads,
K head size, I MLP width.
"""

import collections
import math

import keras
from keras import ops
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell

from keras_brt.layers.attention import (
    attend,
    extend_window,
    join_window,
    l2_normalize,
    window_mask,
)
from keras_brt.layers.common import (
    FeedForward,
    apply_dense,
    check_choice,
    check_positive_int,
    check_rate,
    dense,
    resolve_head_dim,
    rms_norm,
    split_heads,
)
from keras_brt.layers.gates import GATES, check_bias_init, get_gate
from keras_brt.layers.relative_position import RelativePositionBias

STATE_MLPS = ("skip", "single", "dual")


def key_count_scale(num_keys):
    """`log2(n² - n)`, the initial logit scale of cosine attention over n keys (Henry et
    al., 2020); 1.0 for a single key."""
    return math.log2(num_keys * num_keys - num_keys) if num_keys > 1 else 1.0


def initial_state_scale(state_attention_scale_init, attention_scale_init, num_keys):
    """The initial logit scale of a state attention over `num_keys` keys: `"auto"` is
    `key_count_scale(num_keys)`, None the shared `attention_scale_init`, a float itself."""
    if state_attention_scale_init == "auto":
        return key_count_scale(num_keys)
    if state_attention_scale_init is None:
        return attention_scale_init
    return state_attention_scale_init


def check_scale_init(arg, value):
    """Raises a `ValueError` naming `arg` unless `value` is "auto", None or a positive float."""
    if value in ("auto", None):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(
            f'`{arg}` must be "auto", None or a positive float. Received: {arg}={value!r}'
        )


# Named results of the cell's steps (each field `(B, L, H, K)`; L = W tokens or S states).
TokenProjections = collections.namedtuple(
    "TokenProjections", ["self_queries", "keys", "values", "cross_queries"])
StateProjections = collections.namedtuple(
    "StateProjections", ["self_queries", "keys", "values", "cross_queries"])
# The token path's dropout masks: on the normed inputs and the MLP's output `(B, W, D)`, and
# on the window's attention weights `(H, W, 2W)`. One set is drawn per RNN call.
DropoutMasks = collections.namedtuple("DropoutMasks", ["inputs", "feed_forward", "attention"])


@keras.saving.register_keras_serializable(package="keras_brt")
class BlockRecurrentCell(DropoutRNNCell, keras.layers.Layer):
    """Keras RNN cell of the Block-Recurrent Transformer: one step = one block.

    The cell is a whole transformer layer for one block of tokens plus the
    recurrent update of the state vectors (see the module docstring for the
    math and where it follows the official code). It implements the Keras RNN
    cell protocol, so `keras.layers.RNN(cell)` runs it over a sequence of
    blocks `(B, N, W, D)`; `keras_brt.layers.BlockRecurrentRNN` does the
    `(B, T, D)` reshaping and gives correct symbolic shapes.

    The carried state is the flat list `[state (B, S, D), prev_keys (B, W, H, K),
    prev_values (B, W, H, K)]`. `get_initial_state` returns the learned initial
    state and an empty (zero) key/value cache, like meliad at a document start.

    Dropout (on the normalised input, the token attention probabilities and the
    token MLP output) never touches the state path. Its masks are drawn once per
    RNN call, outside the loop, and reused for every block (meliad tiles its
    masks the same way); this keeps the loop stateless, which JAX requires.

    Args:
        hidden_dim: int. Model width D.
        num_heads: int. Attention heads H.
        head_dim: int or None. Head size K; None means D // H.
        block_size: int. Tokens per block W (also the attention window).
        num_state_vectors: int. Number S of state vectors.
        gate: `"fixed"` (the paper's fixed/bias gate) or `"lstm"`.
        state_mlp: `"skip"` (projection only, the paper's best), `"single"`
            (one ReLU/tanh MLP, no norm) or `"dual"` (projection + gate, then a
            pre-norm MLP + a second gate).
        intermediate_dim: int. Token MLP width (and state MLP width for
            "single"/"dual"); defaults to `4 * hidden_dim`.
        dropout: float. Dropout rate of the token path.
        relative_position_buckets: int. T5 buckets (32).
        relative_position_max_distance: int. T5 max distance (128).
        attention_scale_init: float. Initial per-head logit scale (meliad: 1.0).
        state_attention_scale_init: `"auto"`, float or None. Initial logit
            scale of the three attentions of the state path (states reading
            states, states reading the 2W-token window, tokens reading the
            states). `"auto"` (the default) sets each to `log2(n² - n)` for the
            n keys it reads (Henry et al., 2020, "Query-Key Normalization for
            Transformers"): 18 for 512 keys, 20 for 1024. None uses
            `attention_scale_init` (the paper's setting). Cosine logits times a
            small scale spread attention almost evenly over hundreds of keys,
            and Adam moves a scale by about one learning rate per step, so the
            scales stay where they start.
        gate_bias_init: float. Mean of the gate's keep bias at initialisation
            (`FixedGate` / `LSTMGate` `bias_init`). The default 2.0 starts the
            fixed gate at 0.88 (a memory of about eight blocks); the paper's
            0.0 starts it at 0.5, which forgets too fast for the state to learn
            (bench/results/NOTES.md, "Making the state learn"). `"chrono"`
            spreads the features' memories from 2 to 64 blocks instead
            (`keras_brt.layers.gates.keep_bias_initializer`).
        seed: int or None. Seed of the dropout masks.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Call arguments:
        inputs: `(B, W, D)` one block of token activations.
        states: list `[state, prev_keys, prev_values]` as above.
        training: bool, enables dropout.

    Returns:
        `(outputs (B, W, D), [new_state, keys, values])`.

    Example:

    ```python
    cell = keras_brt.layers.BlockRecurrentCell(
        hidden_dim=64, num_heads=4, head_dim=16, block_size=8,
        num_state_vectors=16)
    rnn = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    outputs, state, keys, values = rnn(x)  # x: (B, N, 8, 64)
    ```
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        head_dim,
        block_size,
        num_state_vectors=512,
        gate="fixed",
        state_mlp="skip",
        intermediate_dim=None,
        dropout=0.0,
        relative_position_buckets=32,
        relative_position_max_distance=128,
        attention_scale_init=1.0,
        state_attention_scale_init="auto",
        gate_bias_init=2.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.head_dim = resolve_head_dim(hidden_dim, num_heads, head_dim)
        check_positive_int("block_size", block_size)
        check_positive_int("num_state_vectors", num_state_vectors)
        check_positive_int("intermediate_dim", intermediate_dim, allow_none=True)
        check_rate("dropout", dropout)
        check_choice("gate", gate, GATES)
        check_choice("state_mlp", state_mlp, STATE_MLPS)
        check_scale_init("state_attention_scale_init", state_attention_scale_init)
        check_bias_init("gate_bias_init", gate_bias_init)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.block_size = block_size
        self.num_state_vectors = num_state_vectors
        self.gate = gate
        self.state_mlp = state_mlp
        self.intermediate_dim = intermediate_dim or 4 * hidden_dim
        self.dropout = dropout
        self.recurrent_dropout = 0.0  # The state path never drops out.
        self.relative_position_buckets = relative_position_buckets
        self.relative_position_max_distance = relative_position_max_distance
        self.attention_scale_init = attention_scale_init
        self.state_attention_scale_init = state_attention_scale_init
        self.gate_bias_init = gate_bias_init
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if dropout > 0 else None
        self.state_size = -1  # Custom shapes: see get_initial_state().
        self.output_size = hidden_dim
        self.window_mask = window_mask(block_size)  # (W, 2W) numpy booleans

    # === Weights ===

    def build(self, inputs_shape):
        if inputs_shape[-1] != self.hidden_dim or (
            inputs_shape[-2] is not None and inputs_shape[-2] != self.block_size
        ):
            raise ValueError(
                f"The step input must be (batch, block_size={self.block_size}, "
                f"hidden_dim={self.hidden_dim}). Received: inputs.shape={inputs_shape}"
            )
        d, hk, s = self.hidden_dim, self.num_heads * self.head_dim, self.num_state_vectors
        tokens = (None, self.block_size, d)
        states = (None, s, d)

        def projection(units, name, input_dim, activation=None):
            return dense(units, name, self.dtype_policy, input_dim, activation)

        def state_scale(num_keys):
            return initial_state_scale(self.state_attention_scale_init,
                                       self.attention_scale_init, num_keys)

        def scale(name, value=self.attention_scale_init):
            return self.add_weight(
                shape=(self.num_heads,),
                initializer=keras.initializers.Constant(value),
                name=name,
            )

        # Token side ("tbase"): norm, fused Q/K/V/Q2, out projection, MLP.
        self.token_norm = rms_norm("token_norm", self.dtype_policy)
        self.token_norm.build(tokens)
        self.token_qkv_dense = projection(4 * hk, "token_qkv_dense", d)
        self.token_output_dense = projection(d, "token_output_dense", 2 * hk)
        self.token_self_scale = scale("token_self_scale")
        self.token_cross_scale = scale("token_cross_scale", state_scale(s))
        self.relative_position = RelativePositionBias(
            self.num_heads,
            num_buckets=self.relative_position_buckets,
            max_distance=self.relative_position_max_distance,
            dtype=self.dtype_policy,
            name="relative_position",
        )
        self.relative_position.build()
        self.feed_forward = FeedForward(
            d, self.intermediate_dim, self.dropout, dtype=self.dtype_policy, name="feed_forward"
        )
        self.feed_forward.build(tokens)

        # State side ("recurrent_tbase"): norm, state IDs, fused Q/K/V/Q2, scales.
        self.state_norm = rms_norm("state_norm", self.dtype_policy)
        self.state_norm.build(states)
        self.state_ids = self.add_weight(
            shape=(s, d), initializer=keras.initializers.RandomNormal(stddev=1.0), name="state_ids"
        )
        self.initial_state = self.add_weight(
            shape=(s, d),
            initializer=keras.initializers.RandomNormal(stddev=0.1),
            name="initial_state",
        )
        self.state_qkv_dense = projection(4 * hk, "state_qkv_dense", d)
        self.state_self_scale = scale("state_self_scale", state_scale(s))
        self.state_cross_scale = scale("state_cross_scale", state_scale(2 * self.block_size))

        # State update: "skip" and "dual" project 2HK -> D; "single" is an MLP.
        if self.state_mlp == "single":
            self.state_hidden_dense = projection(
                self.intermediate_dim, "state_hidden_dense", 2 * hk, activation="relu"
            )
            self.state_output_dense = projection(d, "state_output_dense", self.intermediate_dim)
            gate_input_dim = self.intermediate_dim
        else:
            self.state_output_dense = projection(d, "state_output_dense", 2 * hk)
            gate_input_dim = 2 * hk
        self.state_gate = get_gate(
            self.gate, bias_init=self.gate_bias_init, dtype=self.dtype_policy, name="state_gate"
        )
        self.state_gate.build(states, states, (None, s, gate_input_dim))
        if self.state_mlp == "dual":
            self.state_feed_forward = FeedForward(
                d, self.intermediate_dim, 0.0, dtype=self.dtype_policy, name="state_feed_forward"
            )
            self.state_feed_forward.build(states)
            self.state_ffn_gate = get_gate(
                self.gate, bias_init=self.gate_bias_init, dtype=self.dtype_policy,
                name="state_ffn_gate",
            )
            self.state_ffn_gate.build(states, states, (None, s, self.intermediate_dim))

    # === RNN cell protocol ===

    def get_initial_state(self, batch_size=None):
        """Returns `[initial_state (B, S, D), zero keys (B, W, H, K), zero values]`."""
        state = ops.cast(self.initial_state, self.compute_dtype)
        state = ops.broadcast_to(state[None], (batch_size, self.num_state_vectors, self.hidden_dim))
        cache = (batch_size, self.block_size, self.num_heads, self.head_dim)
        return [state, ops.zeros(cache, self.compute_dtype), ops.zeros(cache, self.compute_dtype)]

    def get_dropout_mask(self, step_input):
        """Draws (once per RNN call) the masks of the token path, reused by every block."""
        if getattr(self, "_dropout_mask", None) is None and self.dropout > 0:
            self._dropout_mask = self.draw_dropout_masks(step_input)
        return getattr(self, "_dropout_mask", None)

    def draw_dropout_masks(self, step_input):
        """A `DropoutMasks` for blocks shaped like `step_input` `(B, W, D)`."""
        w = self.block_size
        ones = ops.ones_like(step_input)
        attention_ones = ops.ones((self.num_heads, w, 2 * w), "float32")
        return DropoutMasks(
            keras.random.dropout(ones, self.dropout, seed=self.seed_generator),
            keras.random.dropout(ones, self.dropout, seed=self.seed_generator),
            keras.random.dropout(attention_ones, self.dropout, seed=self.seed_generator),
        )

    # === One block: the cell's steps, composed ===

    def call(self, inputs, states, training=False):
        state, prev_keys, prev_values = states[:3]
        masks = None
        if training and self.dropout > 0:
            # Masks drawn by the RNN before its loop, or here for a direct call.
            masks = getattr(self, "_dropout_mask", None) or self.draw_dropout_masks(inputs)
        tokens = self.token_projections(inputs, None if masks is None else masks.inputs)
        window_keys = join_window(prev_keys, tokens.keys)  # (B, 2W, H, K)
        window_values = join_window(prev_values, tokens.values)  # (B, 2W, H, K)
        states_read = self.state_projections(state)
        # Vertical direction: tokens read the window and the old state, in parallel.
        outputs = self.token_outputs(
            inputs, tokens, window_keys, window_values, states_read, self.window_bias(),
            ops.convert_to_tensor(self.window_mask), masks, training,
        )  # (B, W, D)
        # Horizontal direction: the states read themselves and the window; then the gate.
        new_state = self.advance(state, states_read, window_keys, window_values)  # (B, S, D)
        return outputs, [new_state, tokens.keys, tokens.values]

    def token_projections(self, inputs, dropout_mask=None):
        """Norm (then the input dropout mask, if any), then the token keys/values shared by
        token self-attention and by the states reading the tokens, and the queries of self-
        and cross-attention; queries and keys L2-normalised.

        Args:
            inputs: `(B, ..., D)`, e.g. one block `(B, W, D)` or all blocks `(B, N, W, D)`.
            dropout_mask: optional mask broadcastable to `inputs`.

        Returns:
            A `TokenProjections` of `(B, ..., H, K)` tensors.
        """
        x = self.token_norm(inputs)  # (B, ..., D)
        if dropout_mask is not None:
            x = x * dropout_mask
        q_self, keys, values, q_cross = split_heads(
            apply_dense(self.token_qkv_dense, x), 4, self.num_heads, self.head_dim
        )  # 4 × (B, ..., H, K)
        return TokenProjections(l2_normalize(q_self), l2_normalize(keys), values,
                                l2_normalize(q_cross))

    def state_projections(self, state):
        """Norm, then state IDs (shared weights give each state its own query), then the
        state keys/values shared by both directions and the queries of the state's self-
        and cross-attention: a `StateProjections` of `(B, S, H, K)` tensors."""
        s = self.state_norm(state) + ops.cast(self.state_ids, state.dtype)  # (B, S, D)
        q_self, keys, values, q_cross = split_heads(
            apply_dense(self.state_qkv_dense, s), 4, self.num_heads, self.head_dim
        )  # 4 × (B, S, H, K)
        return StateProjections(l2_normalize(q_self), l2_normalize(keys), values,
                                l2_normalize(q_cross))

    def window_bias(self):
        """The `(H, W, 2W)` relative position bias of one block's window."""
        w = self.block_size
        return self.relative_position.contiguous(w, w, 0, 2 * w)

    def token_outputs(self, inputs, tokens, window_keys, window_values, states_read, bias, mask,
                      masks=None, training=False):
        """The token path for Q queries: tokens read the window (causal, T5 bias) and the
        state (no mask, no bias) in parallel; concat, project, residual, then the MLP.

        Args:
            inputs: `(B, Q, D)` the token inputs (the residual stream).
            tokens: their `TokenProjections` (the queries are read).
            window_keys, window_values: `(B, 2W, H, K)` the previous and current block's.
            states_read: the `StateProjections` of the state this block reads.
            bias: `(H, Q, 2W)` position bias; mask: `(Q, 2W)` booleans, True where read.
            masks: optional `DropoutMasks` (attention and MLP masks are used).

        Returns:
            `(B, Q, D)`.
        """
        batch, length = ops.shape(inputs)[0], ops.shape(inputs)[1]
        token_self = attend(
            tokens.self_queries, window_keys, window_values, self.token_self_scale,
            bias=bias, mask=mask, dropout_mask=None if masks is None else masks.attention,
        )  # (B, Q, H, K)
        token_cross = attend(
            tokens.cross_queries, states_read.keys, states_read.values, self.token_cross_scale
        )  # (B, Q, H, K)
        hk = self.num_heads * self.head_dim
        token_heads = ops.reshape(
            ops.concatenate([token_self, token_cross], axis=2), (batch, length, 2 * hk)
        )  # (B, Q, 2HK)
        outputs = inputs + apply_dense(self.token_output_dense, token_heads)  # (B, Q, D)
        return outputs + self.feed_forward(
            outputs, training=training, dropout_mask=None if masks is None else masks.feed_forward
        )  # (B, Q, D)

    def advance(self, state, states_read, window_keys, window_values):
        """The state after one block: the states read themselves and all 2W tokens (no mask,
        no bias) in parallel; concat; the state MLP and gate replace the residual.

        Args:
            state: `(B, S, D)`; states_read: its `StateProjections`.
            window_keys, window_values: `(B, 2W, H, K)` the previous and current block's.

        Returns:
            The new state `(B, S, D)`.
        """
        state_self = attend(
            states_read.self_queries, states_read.keys, states_read.values, self.state_self_scale
        )  # (B, S, H, K)
        state_cross = attend(
            states_read.cross_queries, window_keys, window_values, self.state_cross_scale
        )  # (B, S, H, K)
        state_heads = ops.reshape(
            ops.concatenate([state_self, state_cross], axis=2),
            (ops.shape(state)[0], self.num_state_vectors, 2 * self.num_heads * self.head_dim),
        )  # (B, S, 2HK)
        return self._update_state(state, state_heads)  # (B, S, D)

    # === Decoding: one token at a time ===

    def state_keys_values(self, state):
        """The state's keys and values `(B, S, H, K)` that tokens read during a block."""
        states_read = self.state_projections(state)
        return states_read.keys, states_read.values

    def decode(self, inputs, index, state, s_keys, s_values, prev_keys, prev_values, keys, values):
        """Runs one token per row at position `index` of the current block.

        Args:
            inputs: `(B, 1, D)`.
            index: int scalar, the position inside the block (same for every row).
            state: `(B, S, D)` the state this block reads; `s_keys`, `s_values`
                its `state_keys_values()`.
            prev_keys, prev_values: `(B, W, H, K)` the previous block's.
            keys, values: `(B, W, H, K)` the current block's so far (positions
                at and after `index` are never read).

        Returns:
            `(outputs (B, 1, D), keys, values)` with this token's key and value
            written at `index`. Equal to the block call's output at that position.
        """
        w = self.block_size
        token = self.token_projections(inputs)  # 4 × (B, 1, H, K)
        keys, values, window_keys, window_values, mask = extend_window(
            prev_keys, prev_values, keys, values, token.keys, token.values, index
        )  # 2 × (B, W, H, K), 2 × (B, 2W, H, K), (1, 2W)
        bias = self.relative_position(ops.reshape(index + w, (1,)), ops.arange(0, 2 * w))  # (H, 1, 2W)
        states_read = StateProjections(None, s_keys, s_values, None)
        outputs = self.token_outputs(
            inputs, token, window_keys, window_values, states_read, bias, mask
        )  # (B, 1, D)
        return outputs, keys, values

    def advance_state(self, state, prev_keys, prev_values, keys, values):
        """The state after a whole block whose keys/values are `keys`, `values`."""
        window_keys = join_window(prev_keys, keys)  # (B, 2W, H, K)
        window_values = join_window(prev_values, values)  # (B, 2W, H, K)
        return self.advance(state, self.state_projections(state), window_keys, window_values)

    def _update_state(self, state, state_heads):
        if self.state_mlp == "single":
            hidden = apply_dense(self.state_hidden_dense, state_heads)  # (B, S, I)
            update = ops.tanh(apply_dense(self.state_output_dense, hidden))  # (B, S, D)
            return self.state_gate(state, update, hidden)  # (B, S, D)
        update = apply_dense(self.state_output_dense, state_heads)  # (B, S, D)
        new_state = self.state_gate(state, update, state_heads)  # (B, S, D)
        if self.state_mlp == "dual":
            update, hidden = self.state_feed_forward(new_state, return_hidden=True)  # (B, S, D), (B, S, I)
            new_state = self.state_ffn_gate(new_state, update, hidden)  # (B, S, D)
        return new_state

    # === Config ===

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "head_dim": self.head_dim,
                "block_size": self.block_size,
                "num_state_vectors": self.num_state_vectors,
                "gate": self.gate,
                "state_mlp": self.state_mlp,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "relative_position_buckets": self.relative_position_buckets,
                "relative_position_max_distance": self.relative_position_max_distance,
                "attention_scale_init": self.attention_scale_init,
                "state_attention_scale_init": self.state_attention_scale_init,
                "gate_bias_init": self.gate_bias_init,
                "seed": self.seed,
            }
        )
        return config
