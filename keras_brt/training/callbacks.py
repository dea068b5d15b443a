"""Callbacks for measuring training."""

import csv
import os

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


class StepHistory(keras.callbacks.Callback):
    """Appends one CSV row every `every` training steps: the step and each logged
    metric's mean over those steps.

    The means are recovered from the running means Keras logs, each step weighing
    the same: exact for the loss; for metrics Keras weighs by tokens (bits per
    token) a close approximation when batches hold different numbers of tokens.

    Unlike `keras.callbacks.CSVLogger` (one row per epoch), a run that is killed
    and resumed keeps its whole history in one file: rows are flushed as they are
    written, and on resuming, rows past the step the run resumes from (written
    after its last checkpoint) are dropped before new ones are appended.

    Args:
        path: the CSV file.
        every: steps per row.

    Example:

    ```python
    lm.fit(dataset, steps_per_epoch=1000,
           callbacks=[keras_brt.training.StepHistory("history.csv", every=25)])
    ```
    """

    def __init__(self, path, every):
        super().__init__()
        if every < 1:
            raise ValueError(f"`every` must be at least 1. Received: every={every}")
        self.path, self.every = path, every

    def on_train_begin(self, logs=None):
        start = int(self.model.optimizer.iterations.numpy())
        self._step = start  # counted from here on: reading the optimizer waits for the device
        self._keys, self._means, self._batches = None, {}, 0
        self._last = {"step": start, "batch": 0, "sums": {}}
        if os.path.exists(self.path):
            with open(self.path, newline="") as f:
                rows = list(csv.reader(f))
            if rows:
                self._keys = rows[0][1:]
                kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= start]
                if len(kept) != len(rows):
                    with open(self.path, "w", newline="") as f:
                        csv.writer(f).writerows(kept)

    def on_epoch_begin(self, epoch, logs=None):
        self._batches, self._means = 0, {}
        self._last["batch"], self._last["sums"] = 0, {}

    def on_train_batch_end(self, batch, logs=None):
        self._batches = batch + 1
        self._step += 1
        step = self._step
        if step % self.every or not logs:
            return
        # Keras logs running means since the epoch began: recover the interval's means.
        sums = {k: float(v) * self._batches for k, v in logs.items()}
        count = self._batches - self._last["batch"]
        row = {k: (s - self._last["sums"].get(k, 0.0)) / count for k, s in sums.items()}
        if self._keys is None:
            self._keys = sorted(row)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(["step", *self._keys])
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([step, *(f"{row.get(k, float('nan')):.6g}" for k in self._keys)])
        self._last = {"step": step, "batch": self._batches, "sums": sums}
