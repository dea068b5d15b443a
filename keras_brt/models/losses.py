"""The language-modeling loss."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_brt")
class TokenCrossEntropy(keras.losses.Loss):
    """Cross-entropy of integer targets under float32 logits, in two reductions.

    `logsumexp(logits) - logits[target]` per token: the same values as
    `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`, without the
    `(B, T, V)` log-probabilities and one-hot targets that Keras's JAX version
    materialises (two 4 GiB float32 tensors per step at the paper's vocabulary
    and batch). Targets outside `[0, V)` give NaN rather than a silently wrong
    loss.

    Args:
        reduction: how to reduce the per-token losses (Keras's reductions).
        name: name of the loss.
        dtype: dtype of the loss computation (float32 by default).

    Call arguments:
        y_true: int `(B, T)` target ids.
        y_pred: `(B, T, V)` logits.
        sample_weight: optional `(B, T)` weights (0 masks padding).

    Example:

    ```python
    lm.compile(optimizer="adamw", loss=keras_brt.models.TokenCrossEntropy())
    ```
    """

    def __init__(self, reduction="sum_over_batch_size", name="token_cross_entropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")  # (B, T, V)
        vocabulary = logits.shape[-1]
        target = ops.cast(y_true, "int32")  # (B, T)
        valid = ops.logical_and(target >= 0, target < vocabulary)  # (B, T)
        picked = ops.take_along_axis(
            logits, ops.expand_dims(ops.where(valid, target, 0), -1), axis=-1
        )[..., 0]  # (B, T)
        loss = ops.logsumexp(logits, axis=-1) - picked  # (B, T)
        return ops.where(valid, loss, float("nan"))

    def get_config(self):
        return {**super().get_config(), "dtype": self.dtype}
