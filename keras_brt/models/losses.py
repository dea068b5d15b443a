"""The language-modeling loss."""

import keras
from keras import ops


def target_logits(y_true, logits):
    """The target's logit of every token, and whether the target is an id in `[0, V)`.

    Picked by comparing the vocabulary index with the target (a select and a
    sum) rather than by a gather, so that under XLA the gradient with respect to
    the logits is one elementwise pass (softmax minus the selected entry)
    instead of a float32 copy of the logits plus a scatter. The targets go
    through float32 first, as `keras.losses.Loss` converts them (exact for ids
    below 2**24): the loss and the metrics then build the same computation and
    XLA runs it once per step.

    Args:
        y_true: `(B, T)` target ids.
        logits: `(B, T, V)` float32 logits.

    Returns:
        `(picked, valid)`: float32 `(B, T)` and bool `(B, T)`.
    """
    vocabulary = logits.shape[-1]
    target = ops.cast(ops.cast(y_true, "float32"), "int32")  # (B, T)
    valid = ops.logical_and(target >= 0, target < vocabulary)  # (B, T)
    is_target = ops.equal(ops.arange(vocabulary, dtype="int32"), target[..., None])  # (B, T, V)
    picked = ops.sum(ops.where(is_target, logits, 0.0), axis=-1)  # (B, T)
    return picked, valid


def token_cross_entropy(y_true, logits):
    """Per-token cross-entropy in nats, `logsumexp(logits) - logits[target]`, in float32.

    Targets outside `[0, V)` give NaN. The loss and `BitsPerToken` both call it.

    Args:
        y_true: `(B, T)` target ids.
        logits: `(B, T, V)` logits.

    Returns:
        float32 `(B, T)` nats.
    """
    logits = ops.cast(logits, "float32")  # (B, T, V)
    picked, valid = target_logits(y_true, logits)  # (B, T)
    loss = ops.logsumexp(logits, axis=-1) - picked  # (B, T)
    return ops.where(valid, loss, float("nan"))


@keras.saving.register_keras_serializable(package="keras_brt")
class TokenCrossEntropy(keras.losses.Loss):
    """Cross-entropy of integer targets under float32 logits.

    `logsumexp(logits) - logits[target]` per token (`token_cross_entropy`): the
    same values as `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`,
    without the `(B, T, V)` float32 log-probabilities and one-hot targets that
    Keras's JAX version materialises (two 4 GiB tensors per step at the paper's
    vocabulary and batch): under XLA the forward pass is three reductions over
    the logits and the backward pass one elementwise kernel. Targets outside
    `[0, V)` give NaN rather than a silently wrong loss.

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
        return token_cross_entropy(y_true, y_pred)

    def get_config(self):
        return {**super().get_config(), "dtype": self.dtype}
