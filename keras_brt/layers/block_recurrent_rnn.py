"""`keras.layers.RNN` over blocks of tokens, with correct symbolic shapes."""

import keras
from keras import ops

from keras_brt.layers.block_recurrent_cell import BlockRecurrentCell


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

    Args:
        cell: a `BlockRecurrentCell`.
        return_sequences: bool. Return all `(B, T, D)` outputs (default True)
            or only the last block `(B, W, D)`.
        return_state: bool. Also return the final states.
        unroll: bool. Unroll the loop over blocks (needs a static T).
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

    def __init__(self, cell, return_sequences=True, return_state=False, unroll=False, **kwargs):
        if not isinstance(cell, BlockRecurrentCell):
            raise ValueError(
                f"`cell` must be a keras_brt.layers.BlockRecurrentCell. Received: cell={cell!r}"
            )
        for arg in ("stateful", "go_backwards"):
            if kwargs.get(arg):
                raise ValueError(
                    f"BlockRecurrentRNN does not support `{arg}=True`. Received: {arg}=True"
                )
        super().__init__(
            cell,
            return_sequences=return_sequences,
            return_state=return_state,
            unroll=unroll,
            **kwargs,
        )
        self.supports_masking = False

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
        self._blocks_shape(tuple(sequences.shape))  # Validates the length.
        w, dim = self.cell.block_size, sequences.shape[-1]
        blocks = ops.reshape(sequences, (ops.shape(sequences)[0], -1, w, dim))  # (B, N, W, D)
        results = super().call(blocks, initial_state=initial_state, training=training)
        outputs, states = (results[0], list(results[1:])) if self.return_state else (results, [])
        if self.return_sequences:
            outputs = ops.reshape(outputs, (ops.shape(sequences)[0], -1, dim))  # (B, T, D)
        return (outputs, *states) if self.return_state else outputs

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
        return config
