"""Run directories: checkpoints that resume exactly, tokenizers stored with the run, plots.

A run directory holds everything needed later:

    run.json            the command's settings and the package version (format RUN_FORMAT)
    tokenizer.json      which tokenizer; tokenizer.model for SentencePiece
    checkpoint.keras    weights, optimizer state and the carried lanes, every N steps
    model.keras         the final model
    logs/               TensorBoard logs; history.csv
    evaluation.json     held-out bits per token (state carried / cleared), bits per byte
    loss_by_position.png
"""

import json
import os

import keras

from keras_brt.models import update_guard

RUN_FORMAT = 1  # Version of this layout; bumped on incompatible changes.
CHECKPOINT = "checkpoint.keras"


def write_json(path, payload):
    """Writes JSON atomically (a crash never leaves half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def read_run(run_dir):
    """Reads `run.json`, refusing directories of another layout version."""
    path = os.path.join(run_dir, "run.json")
    if not os.path.isfile(path):
        raise ValueError(
            f"Not a keras-brt run directory (no run.json). Received: run_dir={run_dir!r}"
        )
    with open(path) as f:
        run = json.load(f)
    if run.get("format") != RUN_FORMAT:
        raise ValueError(
            f"The run directory was written by an incompatible keras_brt version "
            f"({run.get('keras_brt_version')!r}, layout format {run.get('format')!r}); this version "
            f"reads format {RUN_FORMAT}. Received: run_dir={run_dir!r}"
        )
    return run


def run_model_path(run_dir):
    """The final model of a run, or its last checkpoint when training has not ended.

    Args:
        run_dir: the run directory.

    Returns:
        The path of `model.keras`, else of the checkpoint; a `ValueError` if
        there is neither.
    """
    model_path = os.path.join(run_dir, "model.keras")
    if not os.path.exists(model_path):
        model_path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.exists(model_path):
        raise ValueError(f"The run directory holds no model yet. Received: run_dir={run_dir!r}")
    return model_path


def save_tokenizer(tokenizer, run_dir):
    from keras_brt.data import SentencePieceTokenizer

    if isinstance(tokenizer, SentencePieceTokenizer):
        tokenizer.save_model(os.path.join(run_dir, "tokenizer.model"))
        write_json(os.path.join(run_dir, "tokenizer.json"),
                   {"type": "sentencepiece", "model": "tokenizer.model"})
    else:
        write_json(os.path.join(run_dir, "tokenizer.json"), {"type": "bytes"})


def load_tokenizer(run_dir):
    from keras_brt.data import ByteTokenizer, SentencePieceTokenizer

    path = os.path.join(run_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise ValueError(f"The run directory has no tokenizer.json. Received: run_dir={run_dir!r}")
    with open(path) as f:
        spec = json.load(f)
    if spec["type"] == "bytes":
        return ByteTokenizer()
    with open(os.path.join(run_dir, spec["model"]), "rb") as f:
        return SentencePieceTokenizer(f.read())


def load_checkpoint(path):
    """Loads a `.keras` checkpoint; a damaged one is an error, never a fresh model."""
    import keras_brt.models  # noqa: F401  (registers the classes, also under the keras-brt command)

    try:
        return keras.saving.load_model(path)
    except Exception as error:
        raise ValueError(
            f"The checkpoint could not be loaded; it is damaged or from another version. It was "
            f"left in place: move it away to start over, or restore a copy. Received: {path!r} "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None


class RunCheckpoint(keras.callbacks.Callback):
    """Saves the whole training state every `every` steps, atomically.

    The `.keras` file holds the weights, the optimizer (its step counter is
    the run's step) and the carried lanes, so a resumed run continues with the
    same step, optimizer state and state of every lane; the data position is
    that step (the lane stream is deterministic).

    Args:
        directory: the run directory.
        every: steps between checkpoints.
    """

    def __init__(self, directory, every):
        super().__init__()
        if every < 1:
            raise ValueError(f"`every` must be at least 1. Received: every={every}")
        self.directory, self.every = directory, every

    def on_train_begin(self, logs=None):
        # Counted from here on: reading the optimizer every step would make the host wait
        # for each step.
        self._step = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every == 0:
            self.save()

    def save(self):
        model = self.model
        update_guard.raise_if_skipped(model)  # never a checkpoint of a run that must stop
        step = int(model.optimizer.iterations.numpy())
        path = os.path.join(self.directory, CHECKPOINT)
        tmp = os.path.join(self.directory, "checkpoint.tmp.keras")
        model.save(tmp)
        os.replace(tmp, path)
        write_json(os.path.join(self.directory, "checkpoint.json"), {"step": step})


def plot_loss_by_position(results, path, title):
    """PNG of bits per token by position inside documents, state carried vs cleared."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, style in (("carried", "o-"), ("cleared", "s--")):
        curve = np.nan_to_num(np.asarray(results[mode]["loss_by_position"], float))
        counts = np.asarray(results[mode]["tokens_by_position"], float)
        bucket = results[mode]["position_bucket"]
        # Log-spaced bins (a few per octave), token-weighted means of the fine buckets.
        edges = np.unique(np.geomspace(1, curve.size, num=4 * max(1, int(np.log2(curve.size))) + 1)
                          .astype(int))
        centers, values = [], []
        for lo, hi in zip(edges[:-1], np.append(edges[1:-1], curve.size + 1)):
            weight = counts[lo - 1:hi - 1].sum()
            if weight > 0:
                values.append((curve[lo - 1:hi - 1] * counts[lo - 1:hi - 1]).sum() / weight)
                centers.append(np.sqrt(lo * hi) * bucket)
        ax.plot(centers, values, style, markersize=3, label=f"state {mode} "
                f"({results[mode]['bits_per_token']:.3f} bits/token)")
    ax.set_xscale("log")
    ax.set_xlabel(f"token position inside the document (log bins of {bucket}-token buckets)")
    ax.set_ylabel("bits per token")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
