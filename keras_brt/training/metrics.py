"""Bits per token: the paper's metric (log2 perplexity over predicted tokens)."""

import math

import keras
from keras import ops


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
        nats = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
        return super().update_state(ops.divide(nats, math.log(2.0)), sample_weight=sample_weight)
