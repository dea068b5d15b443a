"""Held-out evaluation of a run: `evaluate_run` on a model, `evaluate_run_dir` on a run directory."""

import itertools
import os
import time

from keras_brt.layers.common import check_positive_int
from keras_brt.training import runs
from keras_brt.training.data_choice import (check_held_out_size, report_data, report_encoding,
                                             resolve_data)
from keras_brt.training.evaluation import evaluate_bits_per_token, make_eval_step


class _CountingSource:
    """Wraps a source: yields its first `limit` documents and counts their UTF-8 bytes."""

    def __init__(self, source, limit=0):
        self.source, self.limit, self.bytes = source, limit, 0
        self.name = source.name

    def documents(self):
        self.bytes = 0
        docs = self.source.documents()
        for text in itertools.islice(docs, self.limit) if self.limit else docs:
            # The bytes read from disk where the source knows them (any encoding), else UTF-8.
            size = getattr(self.source, "last_document_bytes", None)
            self.bytes += size if size is not None else len(text.encode("utf-8"))
            yield text


def evaluate_run(lm, tokenizer, source, batch_size, segment_length, documents):
    """Held-out evaluation from fresh lanes, each document to its end, state carried and cleared.

    Prints its progress and, if the source reports any, the files it could
    not decode or skipped.

    Args:
        lm: a `BlockRecurrentTransformerCausalLM`.
        tokenizer: the run's tokenizer.
        source: the held-out document source.
        batch_size: lanes per batch.
        segment_length: tokens per lane per step.
        documents: how many documents to evaluate, each to its end (0: all).

    Returns:
        `(report, results)`: the report (bits per token with the state carried
        and cleared, bits per byte, tokens, bytes, vocabulary size, data name;
        what `evaluation.json` holds), and `evaluate_bits_per_token`'s results
        for `"carried"` and `"cleared"`.
    """
    from keras_brt.data import lane_dataset

    counted = _CountingSource(source, documents)
    results, step = {}, make_eval_step(lm)
    for mode, clear in (("carried", False), ("cleared", True)):
        dataset = lane_dataset(counted, tokenizer, batch_size, segment_length).as_numpy_iterator()
        progress = _EvaluationProgress(f"evaluating held-out data, state {mode}")
        results[mode] = evaluate_bits_per_token(lm, dataset, clear_state=clear, step=step,
                                                progress=progress)
        progress.done()
    report_encoding(source, "held-out data")
    carried, cleared = results["carried"], results["cleared"]
    bits = carried["bits_per_token"] * carried["tokens"]
    report = {
        "bits_per_token": carried["bits_per_token"],
        "bits_per_token_state_cleared": cleared["bits_per_token"],
        "bits_per_byte": bits / counted.bytes,
        "bits_per_byte_state_cleared": cleared["bits_per_token"] * cleared["tokens"] / counted.bytes,
        "tokens": carried["tokens"],
        "bytes": counted.bytes,
        "vocabulary_size": lm.backbone.vocabulary_size,
        "data": source.name,
    }
    return report, results


class _EvaluationProgress:
    """Prints the documents and tokens evaluated so far, at most every `every` seconds."""

    def __init__(self, label, every=10.0):
        self.label, self.every = label, every
        self.start = self.last = time.time()
        self.counts = (0, 0, 0)
        print(f"{self.label}...", flush=True)

    def __call__(self, batches, documents, tokens):
        self.counts = (batches, documents, tokens)
        if time.time() - self.last >= self.every:
            self.last = time.time()
            self._print()

    def _print(self):
        batches, documents, tokens = self.counts
        print(f"  {documents} documents, {tokens} tokens ({batches} batches, "
              f"{time.time() - self.start:.0f} s)", flush=True)

    def done(self):
        self._print()


def print_report(report):
    """Prints the one-line summary of an evaluation report (of `evaluate_run`)."""
    print(
        f"held-out bits per token: {report['bits_per_token']:.4f} with the state carried, "
        f"{report['bits_per_token_state_cleared']:.4f} with it cleared at every segment "
        f"(bits per byte {report['bits_per_byte']:.4f} / {report['bits_per_byte_state_cleared']:.4f}; "
        f"{report['tokens']} tokens of {report['data']})",
        flush=True,
    )


PRESET_BATCH_SIZE, PRESET_SEGMENT_BLOCKS = 8, 4


def evaluate_run_dir(run_dir, data=None, data_dir=None, pattern=None, text_feature=None, encoding=None,
                     held_out_fraction=None, eval_data=None, eval_documents=8, plot=None,
                     batch_size=None, segment_length=None):
    """Evaluates a run's model, or a preset folder's, on held-out data.

    Uses the final model, or the last checkpoint of a run still training. The
    data arguments default to the run's settings (see `resolve_data`). A folder
    given as `data` is evaluated whole (every matching file is held-out data);
    `"stdlib"` or a TFDS name is evaluated on its held-out split, not on the
    run's `eval_data`. A preset folder (`save_to_preset`, e.g. a run's
    `preset/`) has no run settings: it needs `data` or `eval_data`. Prints its
    progress and a summary.

    Args:
        run_dir: the run directory, or a preset folder.
        data: `"stdlib"`, a folder (evaluated whole) or a TFDS name (default:
            the run's held-out data).
        data_dir: the TFDS data directory (default: the run's).
        pattern: file-name pattern inside a folder (default: the run's, else `*.txt`).
        text_feature: the TFDS text feature (default: the run's).
        encoding: text encoding of the files (default: the run's, else UTF-8).
        held_out_fraction: share held out (default: the run's, else 0.05).
        eval_data: a folder to evaluate on, whole.
        eval_documents: held-out documents to evaluate, each to its end (0: all).
        plot: the PNG of bits per token by position (default:
            `evaluation_loss_by_position.png` in `run_dir`, or in the working
            directory for a preset folder).
        batch_size: lanes (default: the run's; 8 for a preset folder).
        segment_length: tokens per lane per step, where the cleared evaluation
            clears the state (default: the run's; 4 blocks for a preset folder).

    Returns:
        The report of `evaluate_run`.
    """
    from keras_brt.models import preset_io
    from keras_brt.training.run_models import load_model_and_tokenizer

    check_positive_int("--batch-size", batch_size, allow_none=True)
    check_positive_int("--segment-length", segment_length, allow_none=True)
    if data is not None and eval_data is None and os.path.isdir(data):
        eval_data = data  # A folder given for evaluation is held-out data as a whole.
    preset = preset_io.is_preset_folder(run_dir)
    if preset and data is None and eval_data is None:
        raise ValueError(
            "A preset folder has no run settings, so no held-out data of its own: give "
            f"--data (a folder, 'stdlib' or a TFDS name) or --eval-data. Received: {run_dir!r}"
        )
    lm, tokenizer = load_model_and_tokenizer(run_dir)
    if preset:
        run = {"data": data or eval_data, "preset": os.path.basename(os.path.normpath(run_dir)),
               "batch_size": PRESET_BATCH_SIZE,
               "segment_length": PRESET_SEGMENT_BLOCKS * lm.backbone.block_size}
        plot = plot or "evaluation_loss_by_position.png"
    else:
        run = runs.read_run(run_dir)
    _, test_source = resolve_data(
        data or run["data"], data_dir or run.get("data_dir"), pattern or run.get("pattern", "*.txt"),
        text_feature or run.get("text_feature"), encoding or run.get("encoding", "utf-8"),
        held_out_fraction or run.get("held_out_fraction", 0.05),
        eval_data or (None if data else run.get("eval_data")))
    report_data(None, test_source)
    batch_size = batch_size or run["batch_size"]
    segment_length = segment_length or run["segment_length"]
    check_held_out_size(test_source, tokenizer, batch_size, segment_length, eval_documents)
    report, results = evaluate_run(lm, tokenizer, test_source, batch_size, segment_length,
                                   eval_documents)
    plot = plot or os.path.join(run_dir, "evaluation_loss_by_position.png")
    runs.plot_loss_by_position(results, plot, f"{run['preset']} on {test_source.name}")
    print_report(report)
    print(f"plot written to {plot}")
    return report
