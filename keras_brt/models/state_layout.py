"""The carried state's layout, described once for everything that reads or writes it.

A model's carried state is a flat dict of tensors, one per layer and part:

- `layer_{i}_keys`, `layer_{i}_values` `(B, W, H, K)`: the last block's keys and values,
  for every layer (the window the next block reads);
- `layer_{i}_state` `(B, S, D)`: the state vectors, for every recurrent layer.

Decoding keeps a larger cache under the same naming (`prev_keys`, `prev_values`,
`keys`, `values`, and `state`, `state_keys`, `state_values` in recurrent layers). The
backbone (`state_shapes`, `initial_state`, `call`, `decode_cache`), the carried lanes,
held-out evaluation (which entries "state cleared" resets) and the SavedModel
signatures all take names and shapes from here.
"""

WINDOW_PARTS = ("keys", "values")  # every layer
RECURRENT_PARTS = ("state",)  # recurrent layers only
DECODING_PARTS = ("prev_keys", "prev_values", "keys", "values")
DECODING_RECURRENT_PARTS = ("state", "state_keys", "state_values")


def entry(layer, part):
    """The name of `part` of layer `layer`, e.g. `entry(3, "state")` → `"layer_3_state"`."""
    return f"layer_{layer}_{part}"


class StateLayout:
    """Names and shapes of the carried state of a backbone.

    Args:
        num_layers: int. Layers L.
        recurrent_layers: indices of the recurrent layers.
        block_size, num_heads, head_dim: the window cache's `(W, H, K)`.
        num_state_vectors, hidden_dim: the state vectors' `(S, D)`.

    Example:

    ```python
    layout = backbone.state_layout
    layout.shapes(8)            # {"layer_0_keys": (8, W, H, K), ..., "layer_3_state": (8, S, D)}
    layout.state_vector_names   # ("layer_3_state",): what clearing the state resets
    ```
    """

    def __init__(self, num_layers, recurrent_layers, block_size, num_heads, head_dim,
                 num_state_vectors, hidden_dim):
        self.num_layers = num_layers
        self.recurrent_layers = tuple(sorted(recurrent_layers))
        self.window_shape = (block_size, num_heads, head_dim)
        self.state_vector_shape = (num_state_vectors, hidden_dim)

    def is_recurrent(self, layer):
        return layer in self.recurrent_layers

    def parts(self, layer):
        """The parts of layer `layer`'s carried state."""
        return WINDOW_PARTS + (RECURRENT_PARTS if self.is_recurrent(layer) else ())

    def decoding_parts(self, layer):
        """The parts of layer `layer`'s decoding cache."""
        return DECODING_PARTS + (DECODING_RECURRENT_PARTS if self.is_recurrent(layer) else ())

    def shapes(self, batch_size):
        """`{name: shape}` of the carried state of `batch_size` lanes (batch first)."""
        return {
            entry(i, part): (batch_size,) + (
                self.state_vector_shape if part in RECURRENT_PARTS else self.window_shape)
            for i in range(self.num_layers) for part in self.parts(i)
        }

    @property
    def state_vector_names(self):
        """The entries holding state vectors (the recurrent state proper, as opposed to
        the window's keys and values)."""
        return tuple(entry(i, part) for i in self.recurrent_layers for part in RECURRENT_PARTS)
