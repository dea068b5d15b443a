"""The state-update gates of the Block-Recurrent Transformer.

Both follow meliad (`nn_components.MLP._gate`): the gate replaces the residual
connection of the state path, `new = a ⊙ old + b ⊙ update`.
"""

import keras
from keras import ops

from keras_brt.layers.common import apply_dense, check_choice

GATES = ("fixed", "lstm")
CHRONO_MAX_BLOCKS = 64


def check_bias_init(arg, value):
    """Raises a `ValueError` naming `arg` unless `value` is a float or `"chrono"`."""
    if value == "chrono":
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'`{arg}` must be a float or "chrono". Received: {arg}={value!r}')


@keras.saving.register_keras_serializable(package="keras_brt")
class ChronoInitializer(keras.initializers.Initializer):
    """Chrono initialisation of a keep gate's bias (Tallec & Ollivier, 2018).

    Draws `log(u) - offset` with u ~ U(1, max_blocks - 1) per feature, so that
    `sigmoid(bias + offset) = u / (1 + u)`: the features start with memories
    spread from 2 to `max_blocks` blocks (a time constant of about 1 + u) instead
    of one memory length for all.

    Args:
        offset: float, the constant the gate adds to the bias before the sigmoid.
        max_blocks: int, the longest initial memory in blocks.
        seed: int or None, the seed of the draw (fixed at construction, so the
            initializer also works while a JAX function is traced).

    Example:

    ```python
    bias = ChronoInitializer(offset=1.0)((512,))
    ```
    """

    def __init__(self, offset=0.0, max_blocks=CHRONO_MAX_BLOCKS, seed=None):
        self.offset = float(offset)
        self.max_blocks = int(max_blocks)
        self.seed = seed
        self._uniform = keras.initializers.RandomUniform(1.0, self.max_blocks - 1.0, seed=seed)

    def __call__(self, shape, dtype=None):
        u = self._uniform(shape, dtype="float32")  # (D,)
        return ops.cast(ops.log(u) - self.offset, dtype or "float32")

    def get_config(self):
        return {"offset": self.offset, "max_blocks": self.max_blocks, "seed": self.seed}


def keep_bias_initializer(bias_init, offset=0.0):
    """The initializer of a keep (forget) gate's bias, whose gate is `sigmoid(bias + offset)`.

    A float: N(bias_init, 0.1). `"chrono"`: `ChronoInitializer(offset)`, memories spread
    from 2 to `CHRONO_MAX_BLOCKS` blocks.
    """
    if bias_init != "chrono":
        return keras.initializers.RandomNormal(mean=float(bias_init), stddev=0.1)
    return ChronoInitializer(offset)


@keras.saving.register_keras_serializable(package="keras_brt")
class FixedGate(keras.layers.Layer):
    """The paper's "fixed" gate: a learned, input-independent moving average.

    `g = sigmoid(b)` with `b` a learned vector and `new = g ⊙ old + (1 - g) ⊙ update`.
    meliad calls it the "bias" gate. Note the convention: `g` weights the *old*
    state.

    The paper initialises `b` from N(0, 0.1), so `g ≈ 0.5`: the state starts as
    a moving average over about two blocks, and what a block writes has faded
    to 3% five blocks later. So little gradient then reaches the write from
    later blocks that the state never learns to keep anything
    (bench/results/NOTES.md, "Making the state learn"). `bias_init` shifts the
    mean: 2.0 starts at `g ≈ 0.88`, a memory of about eight blocks.

    Args:
        bias_init: float, or `"chrono"`. Mean of the N(bias_init, 0.1)
            initialisation of `b` (the paper's 0.0 by default); `"chrono"` spreads
            the features' memories from 2 to 64 blocks (`keep_bias_initializer`).
        **kwargs: base layer arguments such as `name` and `dtype`.

    Call arguments:
        old: `(..., D)` the state before the update.
        update: `(..., D)` the candidate update.
        gate_input: ignored (kept so both gates share one signature).

    Returns:
        `(..., D)` the gated state.

    Example:

    ```python
    gate = keras_brt.layers.FixedGate(bias_init=2.0)
    new = gate(old, update, update)
    ```
    """

    def __init__(self, bias_init=0.0, **kwargs):
        super().__init__(**kwargs)
        check_bias_init("bias_init", bias_init)
        self.bias_init = bias_init if bias_init == "chrono" else float(bias_init)

    def build(self, old_shape, update_shape=None, gate_input_shape=None):
        self.bias = self.add_weight(
            shape=(old_shape[-1],),
            initializer=keep_bias_initializer(self.bias_init),
            name="bias",
        )

    def call(self, old, update, gate_input=None):
        g = ops.cast(ops.sigmoid(ops.cast(self.bias, "float32")), old.dtype)  # (D,)
        return g * old + (1.0 - g) * update

    def compute_output_shape(self, old_shape, update_shape=None, gate_input_shape=None):
        return old_shape

    def get_config(self):
        return {**super().get_config(), "bias_init": self.bias_init}


@keras.saving.register_keras_serializable(package="keras_brt")
class LSTMGate(keras.layers.Layer):
    """The paper's "lstm" gate: input-dependent forget and input gates.

    `f = sigmoid(W_f y + b_f + 1)`, `i = sigmoid(W_i y + b_i - 1)` and
    `new = f ⊙ old + i ⊙ update`, where `y` is the gate input (the last hidden
    activation of the state MLP). Kernels start at variance scaling 0.1 and the
    biases at N(0, 0.1), so `f ≈ 0.73` and `i ≈ 0.27`: biased towards
    remembering and far from saturation, as the paper requires.
    `bias_init` shifts the forget gate's bias further (`f ≈ sigmoid(1 + bias_init)`
    at the start), as `FixedGate`'s does.

    Args:
        bias_init: float, or `"chrono"`. Mean of the N(bias_init, 0.1)
            initialisation of the forget gate's bias (the paper's 0.0 by
            default); `"chrono"` spreads the memories from 2 to 64 blocks.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Call arguments:
        old: `(..., D)` the state before the update.
        update: `(..., D)` the candidate update.
        gate_input: `(..., E)` the activation the gates are computed from.

    Returns:
        `(..., D)` the gated state.

    Example:

    ```python
    gate = keras_brt.layers.LSTMGate()
    new = gate(old, update, hidden)
    ```
    """

    def __init__(self, bias_init=0.0, **kwargs):
        super().__init__(**kwargs)
        check_bias_init("bias_init", bias_init)
        self.bias_init = bias_init if bias_init == "chrono" else float(bias_init)

    def build(self, old_shape, update_shape=None, gate_input_shape=None):
        units = old_shape[-1]
        gate_input_shape = gate_input_shape or old_shape
        # The forget gate adds +1 to its bias: "chrono" takes it into account.
        self.forget_dense = self._dense(units, "forget_dense", keep_bias_initializer(self.bias_init, 1.0))
        self.input_dense = self._dense(units, "input_dense", keep_bias_initializer(0.0))
        self.forget_dense.build(gate_input_shape)
        self.input_dense.build(gate_input_shape)

    def _dense(self, units, name, bias_initializer):
        return keras.layers.Dense(
            units,
            kernel_initializer=keras.initializers.VarianceScaling(
                0.1, mode="fan_in", distribution="truncated_normal"
            ),
            bias_initializer=bias_initializer,
            dtype=self.dtype_policy,
            name=name,
        )

    def call(self, old, update, gate_input=None):
        gate_input = old if gate_input is None else gate_input
        forget = ops.sigmoid(ops.cast(apply_dense(self.forget_dense, gate_input), "float32") + 1.0)
        inputs = ops.sigmoid(ops.cast(apply_dense(self.input_dense, gate_input), "float32") - 1.0)
        return ops.cast(forget, old.dtype) * old + ops.cast(inputs, old.dtype) * update

    def compute_output_shape(self, old_shape, update_shape=None, gate_input_shape=None):
        return old_shape

    def get_config(self):
        return {**super().get_config(), "bias_init": self.bias_init}


def get_gate(gate, **kwargs):
    """Returns a new gate layer for `gate` in `("fixed", "lstm")`."""
    check_choice("gate", gate, GATES)
    return FixedGate(**kwargs) if gate == "fixed" else LSTMGate(**kwargs)
