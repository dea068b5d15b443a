"""Callbacks for measuring training."""

import keras


class StepLosses(keras.callbacks.Callback):
    """Records every training step's own loss.

    Keras logs the running mean of the loss since the epoch began; each step's
    loss is recovered from consecutive means (the batches have equal weight).
    After `fit`, `losses` holds one float per training step, in order.

    Example:

    ```python
    record = keras_brt.training.StepLosses()
    lm.fit(dataset, steps_per_epoch=100, callbacks=[record])
    record.losses[-1]  # the last step's loss
    ```
    """

    def __init__(self):
        super().__init__()
        self.losses = []
        self._mean = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._mean = 0.0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        self.losses.append((batch + 1) * mean - batch * self._mean)
        self._mean = mean
