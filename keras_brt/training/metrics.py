"""Bits per token: the paper's metric (log2 perplexity over predicted tokens)."""

import math

import keras
from keras import ops

from keras_brt.models.losses import target_logits, token_cross_entropy


@keras.saving.register_keras_serializable(package="keras_brt")
class BitsPerToken(keras.metrics.Mean):
    """Weighted mean of the token cross-entropy in bits (nats / ln 2).

    Use it in `weighted_metrics` so `sample_weight` masks padding.

    Example:

    ```python
    lm.compile(weighted_metrics=[keras_brt.training.BitsPerToken()])
    ```
    """

    def __init__(self, name="bits_per_token", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        nats = token_cross_entropy(y_true, y_pred)  # (B, T); shared with the loss under XLA
        return super().update_state(ops.divide(nats, math.log(2.0)), sample_weight=sample_weight)


@keras.saving.register_keras_serializable(package="keras_brt")
class TokenAccuracy(keras.metrics.Mean):
    """Weighted fraction of tokens whose target has the largest logit.

    The target's logit is compared with the maximum logit, the same reductions
    as the loss's (`token_cross_entropy`: its logsumexp takes that maximum), so
    under XLA the metric costs no further pass over the `(B, T, V)` logits;
    Keras's `SparseCategoricalAccuracy` runs an argmax over them. The values are
    the same except on an exact tie for the largest logit, which counts as
    correct here (argmax takes the first index). Targets outside `[0, V)`
    count as wrong.

    Use it in `weighted_metrics` so `sample_weight` masks padding; it is the
    causal LM's default metric, named "accuracy".

    Args:
        name: name of the metric.
        **kwargs: base `keras.metrics.Mean` arguments such as `dtype`.

    Example:

    ```python
    lm.compile(weighted_metrics=[keras_brt.training.TokenAccuracy()])
    ```
    """

    def __init__(self, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        logits = ops.cast(y_pred, "float32")  # (B, T, V)
        picked, valid = target_logits(y_true, logits)  # (B, T)
        correct = ops.logical_and(valid, picked >= ops.max(logits, axis=-1))  # (B, T)
        return super().update_state(ops.cast(correct, self.dtype), sample_weight=sample_weight)
