"""`BlockRecurrentCell` with flat step features, for plain `keras.layers.RNN`."""

import keras
from keras import ops

from keras_brt.layers.block_recurrent_cell import BlockRecurrentCell, DropoutRNNCell


@keras.saving.register_keras_serializable(package="keras_brt")
class FlatBlockRecurrentCell(DropoutRNNCell, keras.layers.Layer):
    """A `BlockRecurrentCell` whose step input, output and states are flat vectors.

    Keras's `RNN` layer describes a cell by integer sizes: its symbolic shapes
    are `(batch, steps, output_size)` and `(batch, state_size)`. The block cell's
    step is a `(W, D)` block with a `(S, D)` state and `(W, H, K)` caches, which
    integers cannot describe, so this wrapper flattens them: a step is `W·D`
    features (one block, row-major), the output `W·D`, the states `S·D`,
    `W·H·K` and `W·H·K`. Plain `keras.layers.RNN` then gets every shape right,
    in Functional and Sequential models, with `return_state`, `initial_state`,
    stacking and `.keras` files; reshape with `keras.layers.Reshape` on either
    side. The numbers are the wrapped cell's, unchanged.

    Args:
        cell: a `BlockRecurrentCell`, or its config dict.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Call arguments:
        inputs: `(B, W·D)` one flattened block.
        states: `[state (B, S·D), keys (B, W·H·K), values (B, W·H·K)]`.
        training: bool, enables the cell's dropout.

    Returns:
        `(outputs (B, W·D), [state, keys, values])`, flat.

    Example:

    ```python
    cell = keras_brt.layers.FlatBlockRecurrentCell(keras_brt.layers.BlockRecurrentCell(
        hidden_dim=32, num_heads=2, head_dim=16, block_size=8, num_state_vectors=4))
    inputs = keras.Input((3, 8, 32))  # (N blocks, W, D)
    x = keras.layers.Reshape((3, 8 * 32))(inputs)
    x = keras.layers.RNN(cell, return_sequences=True)(x)  # (None, 3, 256)
    outputs = keras.layers.Reshape((3, 8, 32))(x)
    ```
    """

    def __init__(self, cell, **kwargs):
        if isinstance(cell, dict):
            cell = keras.saving.deserialize_keras_object(cell)
        if not isinstance(cell, BlockRecurrentCell):
            raise ValueError(
                "`cell` must be a BlockRecurrentCell. Received: "
                f"cell={type(cell).__name__}"
            )
        kwargs.setdefault("dtype", cell.dtype_policy)
        super().__init__(**kwargs)
        self.cell = cell
        w, d, s = cell.block_size, cell.hidden_dim, cell.num_state_vectors
        cache = w * cell.num_heads * cell.head_dim
        self.block_shape = (w, d)
        self.state_shapes = ((s, d), (w, cell.num_heads, cell.head_dim),
                             (w, cell.num_heads, cell.head_dim))
        self.state_size = [s * d, cache, cache]
        self.output_size = w * d
        self.recurrent_dropout = 0.0  # read by Keras's RNN; the wrapped cell draws its own masks

    def build(self, inputs_shape):
        if inputs_shape[-1] != self.output_size:
            raise ValueError(
                f"The step input must be (batch, block_size * hidden_dim = {self.output_size}). "
                f"Received: inputs.shape={inputs_shape}"
            )
        if not self.cell.built:  # a deserialized cell comes built from its build config
            self.cell.build((inputs_shape[0],) + self.block_shape)

    def _blocks(self, x, shape):
        return ops.reshape(x, (ops.shape(x)[0],) + shape)

    def _flat(self, x):
        return ops.reshape(x, (ops.shape(x)[0], -1))

    def get_initial_state(self, batch_size=None):
        """The wrapped cell's initial states, flat."""
        return [self._flat(s) for s in self.cell.get_initial_state(batch_size)]

    def get_dropout_mask(self, step_input):
        """The wrapped cell's masks, drawn once per RNN call for blocks like `step_input`."""
        return self.cell.get_dropout_mask(self._blocks(step_input, self.block_shape))

    def reset_dropout_mask(self):
        self.cell.reset_dropout_mask()

    def call(self, inputs, states, training=False):
        block = self._blocks(inputs, self.block_shape)  # (B, W, D)
        states = [self._blocks(s, shape) for s, shape in zip(states, self.state_shapes)]
        outputs, new_states = self.cell(block, states, training=training)  # (B, W, D), ...
        return self._flat(outputs), [self._flat(s) for s in new_states]  # (B, W·D), ...

    def get_config(self):
        return {**super().get_config(), "cell": keras.saving.serialize_keras_object(self.cell)}
