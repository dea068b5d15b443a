"""Small building blocks shared by the sliding-window layer and the recurrent cell."""

import keras
from keras import ops


def dense_initializer():
    """meliad's kernel initialiser: variance scaling 1.0, fan-in, truncated normal."""
    return keras.initializers.VarianceScaling(
        1.0, mode="fan_in", distribution="truncated_normal"
    )


def rms_norm(name, dtype):
    """meliad's pre-norm: RMS (no mean), learned scale, no bias, eps 1e-6, float32."""
    return keras.layers.RMSNormalization(epsilon=1e-6, dtype=dtype, name=name)


def dense(units, name, dtype, input_dim, activation=None):
    """A built bias-free Dense layer with meliad's initialiser."""
    layer = keras.layers.Dense(
        units,
        activation=activation,
        use_bias=False,
        kernel_initializer=dense_initializer(),
        dtype=dtype,
        name=name,
    )
    layer.build((None, input_dim))
    return layer


def apply_dense(layer, x):
    """`layer(x)` for a Dense `layer` on `x` `(B, ..., E)`, computed on the `(B·…, E)` rows
    when a leading size is unknown at trace time.

    TensorFlow's `fit` traces with an unknown batch size when a batch is partial (the last
    one, or fewer samples than `batch_size`). Its Dense on such an input of rank > 2 is
    `tf.tensordot`, which then transposes by a computed permutation (a `ConcatV2`, not a
    constant); inside an RNN loop, the loop's gradient reads that permutation back from the
    forward pass through an accumulator, so it is no longer a compile-time constant and XLA
    (`jit_compile=True`) refuses the transpose. A rank-2 product has no transpose (Keras's
    LSTM cell only multiplies rank-2 inputs) and gives the same numbers. Static shapes
    (full batches, JAX) keep `layer(x)` itself.
    """
    if all(size is not None for size in x.shape[:-1]):
        return layer(x)
    shape = ops.shape(x)
    leading = tuple(shape[i] for i in range(len(x.shape) - 1))
    y = layer(ops.reshape(x, (-1, x.shape[-1])))  # (B·…, units)
    return ops.reshape(y, leading + (y.shape[-1],))  # (B, ..., units)


def check_choice(arg, value, choices):
    """Raises a `ValueError` naming `arg` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"`{arg}` must be one of {choices}. Received: {arg}={value!r}")


def check_positive_int(arg, value, allow_none=False):
    """Raises a `ValueError` naming `arg` unless `value` is an int >= 1."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{arg}` must be a positive integer. Received: {arg}={value!r}")


def check_float(arg, value):
    """Raises a `ValueError` naming `arg` unless `value` is a (non-bool) real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{arg}` must be a float. Received: {arg}={value!r}")


def check_rate(arg, value):
    """Raises a `ValueError` naming `arg` unless `0 <= value < 1`."""
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{arg}` must be a float in [0, 1). Received: {arg}={value!r}")


def resolve_head_dim(hidden_dim, num_heads, head_dim):
    """Returns `head_dim`, defaulting to `hidden_dim // num_heads` when None."""
    check_positive_int("hidden_dim", hidden_dim)
    check_positive_int("num_heads", num_heads)
    if head_dim is None:
        if hidden_dim % num_heads:
            raise ValueError(
                "With `head_dim=None`, `hidden_dim` must be divisible by `num_heads` "
                f"(head_dim = hidden_dim // num_heads). Received: hidden_dim={hidden_dim}, "
                f"num_heads={num_heads}"
            )
        return hidden_dim // num_heads
    check_positive_int("head_dim", head_dim)
    return head_dim


def split_heads(x, groups, num_heads, head_dim):
    """Splits a fused projection `(B, ..., G*H*K)` into G tensors `(B, ..., H, K)`."""
    shape = ops.shape(x)
    leading = tuple(shape[i] for i in range(len(x.shape) - 1))
    x = ops.reshape(x, leading + (groups, num_heads, head_dim))
    return [x[..., g, :, :] for g in range(groups)]


@keras.saving.register_keras_serializable(package="keras_brt")
class FeedForward(keras.layers.Layer):
    """Pre-norm ReLU MLP without biases, as in meliad; returns the residual branch.

    `Dropout(W_2 · relu(W_1 · RMSNorm(x)))`; the caller adds the residual.

    Args:
        hidden_dim: int. Input and output width D.
        intermediate_dim: int. Hidden width of the MLP.
        dropout: float. Dropout rate on the output (0 in the state path).
        **kwargs: base layer arguments such as `name` and `dtype`.

    Call arguments:
        inputs: `(..., D)`.
        training: bool, enables dropout.
        dropout_mask: optional precomputed multiplier for the output, used by
            the recurrent cell so that the mask is drawn outside the RNN loop.
        return_hidden: bool. Also return the ReLU activation (the LSTM gate
            input of the "dual" state MLP).

    Returns:
        `(..., D)`, or `((..., D), (..., intermediate_dim))` with `return_hidden`.

    Example:

    ```python
    ffn = keras_brt.layers.FeedForward(hidden_dim=64, intermediate_dim=256)
    y = x + ffn(x)
    ```
    """

    def __init__(self, hidden_dim, intermediate_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("hidden_dim", hidden_dim)
        check_positive_int("intermediate_dim", intermediate_dim)
        check_rate("dropout", dropout)
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout

    def build(self, inputs_shape):
        if inputs_shape[-1] != self.hidden_dim:
            raise ValueError(
                f"The last axis of `inputs` must be hidden_dim={self.hidden_dim}. "
                f"Received: inputs.shape={inputs_shape}"
            )
        self.norm = rms_norm("norm", self.dtype_policy)
        self.norm.build(inputs_shape)
        self.hidden_dense = dense(
            self.intermediate_dim, "hidden_dense", self.dtype_policy, self.hidden_dim, "relu"
        )
        self.output_dense = dense(
            self.hidden_dim, "output_dense", self.dtype_policy, self.intermediate_dim
        )
        self.output_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def call(self, inputs, training=False, dropout_mask=None, return_hidden=False):
        hidden = apply_dense(self.hidden_dense, self.norm(inputs))
        outputs = apply_dense(self.output_dense, hidden)
        if dropout_mask is not None:
            outputs = outputs * ops.cast(dropout_mask, outputs.dtype)
        else:
            outputs = self.output_dropout(outputs, training=training)
        return (outputs, hidden) if return_hidden else outputs

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
            }
        )
        return config
