"""`keras.layers.RNN` over blocks of tokens, with correct symbolic shapes."""

import keras
from keras import ops
from keras.src import backend

from keras_brt.layers.attention import block_windows
from keras_brt.layers.block_recurrent_cell import BlockRecurrentCell, StateProjections


@keras.saving.register_keras_serializable(package="keras_brt")
class BlockRecurrentRNN(keras.layers.RNN):
    """Runs a `BlockRecurrentCell` over a token sequence, one block per step.

    A `keras.layers.RNN` subclass (as `keras.layers.ConvLSTM` is for its cell):
    it takes `(B, T, D)` with T a multiple of the cell's block size W, runs the
    cell over the `N = T / W` blocks and returns `(B, T, D)`, plus the final
    `[state (B, S, D), keys (B, W, H, K), values (B, W, H, K)]` with
    `return_state=True`. Unlike plain `keras.layers.RNN`, whose shape inference
    assumes vector states, its symbolic output shapes are right, so it works in
    Functional models.

    Keras RNN masks are refused (they do not fit blocks and break the JAX
    loop); padding is handled by the backbone. `stateful=True` is refused too:
    Keras does not save or distribute that state; carry the state explicitly
    (`initial_state=` in, `return_state=True` out) as
    `BlockRecurrentTransformerCausalLM` does.

    With `parallel_token_path=True` (the default) only what depends on the
    state runs in the loop over blocks, as in the paper's official code: the
    token projections, the tokens' sliding-window attention, the output
    projection and the MLP run over all blocks at once, and each loop step
    computes the state's projections and the state update; the loop hands out
    each block's state keys/values, so the tokens' attention to the state also
    runs over all blocks at once after it. The result is the cell's, block by
    block (the tests hold both routes to the same numbers); `False` runs the
    whole cell per block through `keras.layers.RNN`.

    Args:
        cell: a `BlockRecurrentCell`.
        return_sequences: bool. Return all `(B, T, D)` outputs (default True)
            or only the last block `(B, W, D)`.
        return_state: bool. Also return the final states.
        unroll: bool or int. `True` unrolls the loop over blocks (needs a
            static T); an int n unrolls it for calls of at most n blocks (static
            T) and loops otherwise. Unrolling lets XLA schedule the blocks' state
            updates together: 6% off a training step of the paper's model on an
            H100, 13% at the byte-level size, 15% on CPU (bench/results/NOTES.md);
            it compiles one copy of the step per block.
        parallel_token_path: bool. Run the state-independent token work over
            all blocks at once (used with `return_sequences=True`).
        **kwargs: other `keras.layers.RNN` arguments (`go_backwards` is not
            meaningful for a causal model and is refused).

    Call arguments:
        sequences: `(B, T, D)`.
        initial_state: optional list `[state, keys, values]`; defaults to the
            cell's learned initial state and an empty cache.
        training: bool, enables dropout.

    Example:

    ```python
    cell = keras_brt.layers.BlockRecurrentCell(64, 4, 16, block_size=8,
                                               num_state_vectors=16)
    tokens = keras.Input((32, 64))
    outputs, state, keys, values = keras_brt.layers.BlockRecurrentRNN(
        cell, return_state=True)(tokens)
    model = keras.Model(tokens, outputs)
    ```
    """

    def __init__(self, cell, return_sequences=True, return_state=False, unroll=False,
                 parallel_token_path=True, **kwargs):
        if not isinstance(cell, BlockRecurrentCell):
            raise ValueError(
                f"`cell` must be a keras_brt.layers.BlockRecurrentCell. Received: cell={cell!r}"
            )
        for arg in ("stateful", "go_backwards"):
            if kwargs.get(arg):
                raise ValueError(
                    f"BlockRecurrentRNN does not support `{arg}=True`. Received: {arg}=True"
                )
        if not isinstance(unroll, int) or unroll < 0:
            raise ValueError(
                "`unroll` must be a bool or a non-negative int (unroll calls of at most "
                f"that many blocks). Received: unroll={unroll!r}"
            )
        super().__init__(
            cell,
            return_sequences=return_sequences,
            return_state=return_state,
            unroll=bool(unroll),
            **kwargs,
        )
        self.unroll_setting = unroll
        self.supports_masking = False
        self.parallel_token_path = parallel_token_path

    def _set_unroll(self, num_blocks):
        """Keras's `unroll` flag for a call of `num_blocks` blocks (None: unknown)."""
        setting = self.unroll_setting
        if setting is True and num_blocks is None:
            raise ValueError(
                "`unroll=True` needs a static sequence length. Received: sequences with an "
                "unknown length (use an int `unroll` to unroll only short static calls)"
            )
        if isinstance(setting, bool):
            self.unroll = setting
        else:
            self.unroll = num_blocks is not None and num_blocks <= setting

    def _blocks_shape(self, sequences_shape):
        batch, length, dim = sequences_shape
        w = self.cell.block_size
        if length is not None and length % w:
            raise ValueError(
                f"The length of `sequences` must be a multiple of block_size={w}. "
                f"Received: sequences.shape={tuple(sequences_shape)}"
            )
        return (batch, None if length is None else length // w, w, dim)

    def build(self, sequences_shape, initial_state_shape=None):
        if len(sequences_shape) != 3:
            raise ValueError(
                "`sequences` must have shape (batch, length, hidden_dim). "
                f"Received: sequences.shape={tuple(sequences_shape)}"
            )
        blocks_shape = self._blocks_shape(sequences_shape)
        if not self.cell.built:
            self.cell.build((blocks_shape[0],) + blocks_shape[2:])
        self.built = True

    def call(self, sequences, initial_state=None, mask=None, training=False):
        if mask is not None:
            raise ValueError(
                "BlockRecurrentRNN does not take Keras masks; pass padding to the "
                f"backbone instead. Received: mask with shape {mask.shape}"
            )
        num_blocks = self._blocks_shape(tuple(sequences.shape))[1]  # Validates the length.
        self._set_unroll(num_blocks)
        # A static block count keeps N known in TensorFlow graphs whose batch is not.
        num_blocks = -1 if num_blocks is None else num_blocks
        if self.parallel_token_path and self.return_sequences:
            outputs, *states = self._parallel_token_path(
                sequences, num_blocks, initial_state, training
            )
            return (outputs, *states) if self.return_state else outputs
        w, dim = self.cell.block_size, sequences.shape[-1]
        blocks = ops.reshape(sequences, (ops.shape(sequences)[0], num_blocks, w, dim))  # (B, N, W, D)
        results = super().call(blocks, initial_state=initial_state, training=training)
        outputs, states = (results[0], list(results[1:])) if self.return_state else (results, [])
        if self.return_sequences:
            outputs = ops.reshape(outputs, (ops.shape(sequences)[0], -1, dim))  # (B, T, D)
        return (outputs, *states) if self.return_state else outputs

    def _parallel_token_path(self, sequences, num_blocks, initial_state, training):
        """The cell over all blocks, with only the state-dependent work in the loop."""
        cell = self.cell
        h, k, w = cell.num_heads, cell.head_dim, cell.block_size
        batch, dim = ops.shape(sequences)[0], sequences.shape[-1]
        if initial_state is None:
            initial_state = cell.get_initial_state(batch)
        state, prev_keys, prev_values = initial_state[:3]
        blocks = ops.reshape(sequences, (batch, num_blocks, w, dim))  # (B, N, W, D)
        masks = None
        if training and cell.dropout > 0:  # One set of token-path masks, shared by every block.
            masks = cell.draw_dropout_masks(blocks[:, 0])

        tokens = cell.token_projections(
            blocks, None if masks is None else masks.inputs[:, None]
        )  # 4 × (B, N, W, H, K)
        keys, values = tokens.keys, tokens.values
        window_keys = block_windows(prev_keys, keys)  # (B, N, 2W, H, K)
        window_values = block_windows(prev_values, values)  # (B, N, 2W, H, K)

        def step(block, states):
            (state,) = states  # (B, S, D)
            window_keys_n, window_values_n = block[:, :2 * w], block[:, 2 * w:]  # 2 × (B, 2W, H, K)
            states_read = cell.state_projections(state)  # 4 × (B, S, H, K)
            new_state = cell.advance(state, states_read, window_keys_n, window_values_n)  # (B, S, D)
            # The keys/values this block's tokens read; their attention runs after the loop.
            return (ops.concatenate([states_read.keys, states_read.values], axis=1),
                    [ops.cast(new_state, state.dtype)])

        # The loop keras.layers.RNN runs (lax.scan on JAX; an XLA-ready while loop on TF).
        # One tensor per block (the RNN loop wants a single input with a known rank).
        packed = ops.concatenate(
            [window_keys, ops.cast(window_values, window_keys.dtype)], axis=2
        )  # (B, N, 4W, H, K)
        _, state_kv, (state,) = backend.rnn(
            step, packed, [state],
            unroll=self.unroll,
            input_length=None if sequences.shape[1] is None else sequences.shape[1] // w,
        )  # (B, N, 2S, H, K), (B, S, D)

        # The cell's token path, every block at once: block n is row b*N + n.
        s = cell.num_state_vectors
        state_kv = ops.reshape(state_kv, (-1, 2 * s, h, k))  # (B*N, 2S, H, K)
        flat = lambda t, length: ops.reshape(t, (-1, length, h, k))  # (B*N, length, H, K)
        if masks is not None:  # The block's MLP mask, tiled over blocks.
            masks = masks._replace(feed_forward=ops.reshape(
                ops.broadcast_to(masks.feed_forward[:, None], ops.shape(blocks)), (-1, w, dim)))
        outputs = cell.token_outputs(
            ops.reshape(sequences, (-1, w, dim)),  # (B*N, W, D)
            tokens._replace(self_queries=flat(tokens.self_queries, w),
                            cross_queries=flat(tokens.cross_queries, w)),
            flat(window_keys, 2 * w),
            flat(window_values, 2 * w),
            # Block n reads the state before its update: (B*N, S, H, K) keys and values.
            StateProjections(None, state_kv[:, :s], state_kv[:, s:], None),
            cell.window_bias(),
            ops.convert_to_tensor(cell.window_mask),
            masks,
            training,
        )  # (B*N, W, D)
        return ops.reshape(outputs, ops.shape(sequences)), state, keys[:, -1], values[:, -1]

    def compute_output_shape(self, sequences_shape, initial_state_shape=None):
        batch, _, dim = sequences_shape
        cell = self.cell
        if self.return_sequences:
            output_shape = tuple(sequences_shape)
        else:
            output_shape = (batch, cell.block_size, dim)
        if not self.return_state:
            return output_shape
        cache = (batch, cell.block_size, cell.num_heads, cell.head_dim)
        return output_shape, (batch, cell.num_state_vectors, cell.hidden_dim), cache, cache

    def compute_mask(self, sequences, mask=None):
        return [None] * 4 if self.return_state else None

    def get_config(self):
        config = super().get_config()
        for key in ("stateful", "go_backwards", "zero_output_for_mask"):
            config.pop(key, None)
        config["parallel_token_path"] = self.parallel_token_path
        config["unroll"] = self.unroll_setting
        return config
