"""What `keras-brt train` says while it trains: the first step's compilation, and a
progress line for a terminal whose time per step and ETA leave that step out.

Neither reads the model's variables: the step is counted from the one the run
started at.
"""

import sys
import time

import keras

COMPILE_NOTICE = (
    "compiling the training step with XLA and filling the data pipeline before the first step "
    "(about a minute on 2 CPU cores for the tiny presets, longer for larger models); the time "
    "per step and the ETA are measured from the second step on"
)


def format_duration(seconds):
    """`"1:02:03"`, `"2:03"` or `"45 s"`."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    if seconds >= 60:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds} s"


class TrainingNotices(keras.callbacks.Callback):
    """Prints a line before the first training step (it compiles, and says roughly how
    long that takes), one when that step is done, with the time it took, and one when
    training ends, before `fit` returns (on TensorFlow, closing the data pipeline
    there has taken seconds) and the model is saved.

    Args:
        start_step: the step the run starts (or resumes) at.
        saving: the line printed when training ends.
        stream: where the lines go (default: `sys.stdout`).
    """

    def __init__(self, start_step=0, saving="saving the model...", stream=None):
        super().__init__()
        self.start_step, self.saving, self.stream = start_step, saving, stream
        self.begun = self.ended = None

    def _print(self, line):
        print(line, file=self.stream or sys.stdout, flush=True)

    def on_train_begin(self, logs=None):
        self.begun = time.monotonic()
        self._print(f"step {self.start_step}: {COMPILE_NOTICE}...")

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self._print(f"step {self.start_step + 1} done in "
                        f"{format_duration(time.monotonic() - self.begun)} (compilation included)")

    def on_train_end(self, logs=None):
        self.ended = time.monotonic()
        self._print(self.saving)


class TerminalProgress(keras.callbacks.Callback):
    """One progress line, rewritten in place (for a terminal, instead of Keras's bar):
    the step, the logged metrics, the time per step and the time left.

    Keras's bar times its first step with the compilation in it (46 s of XLA
    make a first ETA of hours); here the time per step and the ETA come from the
    steps after the first, and none is shown before the second.

    Args:
        total: the run's total steps.
        start_step: the step the run starts (or resumes) at.
        stream: where the line goes (default: `sys.stdout`).
        interval: least seconds between two rewrites (the last step is always shown).
    """

    def __init__(self, total, start_step=0, stream=None, interval=0.2):
        super().__init__()
        self.total, self.start_step = total, start_step
        self.stream, self.interval = stream, interval
        self.after_first, self.shown, self.width, self.open_line = None, 0.0, 0, False

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        step = self.start_step + batch + 1
        if batch == 0:
            self.after_first = now
        elif now - self.shown < self.interval and step != self.total:
            return
        self.shown = now
        metrics = "".join(f" - {k}: {float(v):.4f}" for k, v in (logs or {}).items())
        if batch == 0:
            timing = " - ETA after the next step" if step < self.total else ""
        else:
            per_step = (now - self.after_first) / batch
            timing = f" - {per_step:.2f} s/step"
            if step < self.total:
                timing += f" - ETA {format_duration(per_step * (self.total - step))}"
        line = f"step {step}/{self.total}{metrics}{timing}"
        stream = self.stream or sys.stdout
        stream.write("\r" + line.ljust(self.width) + ("\n" if step == self.total else ""))
        stream.flush()
        self.width, self.open_line = len(line), step != self.total

    def on_train_end(self, logs=None):
        if self.open_line:
            (self.stream or sys.stdout).write("\n")
            (self.stream or sys.stdout).flush()
            self.open_line = False
