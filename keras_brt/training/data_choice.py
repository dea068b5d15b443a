"""Which documents a run trains and is evaluated on: `resolve_data` and its reports.

Errors name the `keras-brt train` flags (`--data`, `--eval-data`, ...) of the
arguments, as the command line passes them through unchanged.
"""

import os
import warnings


def resolve_data(data, data_dir=None, pattern="*.txt", text_feature=None, encoding="utf-8",
                 held_out_fraction=0.05, eval_data=None, held_out=True):
    """The training and held-out document sources of a run.

    Args:
        data: `"stdlib"` (this Python's standard library sources), a folder of
            text files, or the name of a TFDS dataset prepared in `data_dir`.
        data_dir: the TFDS data directory (nothing is downloaded).
        pattern: file-name pattern inside a `data` folder.
        text_feature: the TFDS text feature (default: `book_text` for PG19,
            else `text`).
        encoding: text encoding of the folders' files.
        held_out_fraction: share of `data` held out for evaluation, strictly
            between 0 and 1.
        eval_data: a folder evaluated whole instead of a held-out split of
            `data` (every file of a `data` folder is then trained on, whole).
        held_out: `False` (no evaluation) builds no held-out source.

    Returns:
        `(train_source, held_out_source)`; `held_out_source` is `None` when
        `held_out=False`.
    """
    from keras_brt import data as brt_data

    if not 0 < held_out_fraction < 1:
        raise ValueError("`--held-out-fraction` must lie strictly between 0 and 1. Received: "
                         f"--held-out-fraction={held_out_fraction}")
    if eval_data is not None and not os.path.isdir(eval_data):
        raise ValueError(f"`--eval-data` must be an existing folder. Received: --eval-data={eval_data!r}")
    if data == "stdlib":
        train = brt_data.stdlib_source("train", held_out_fraction)
        test = brt_data.stdlib_source("test", held_out_fraction) if held_out and not eval_data else None
    elif os.path.isdir(data):
        # With a separate evaluation folder, every file of --data is trained on, whole.
        train = brt_data.FolderSource(data, pattern=pattern, split=None if eval_data else "train",
                                      encoding=encoding, held_out_fraction=held_out_fraction)
        test = None
        if held_out and not eval_data:
            test = brt_data.FolderSource(data, pattern=pattern, split="test", encoding=encoding,
                                         held_out_fraction=held_out_fraction)
    elif os.sep in data or data.startswith(".") or os.path.splitext(data)[1] in (".txt", ".py"):
        raise ValueError(f"`--data` is not an existing folder. Received: --data={data!r}")
    else:
        if os.path.exists(data):
            raise ValueError(f"`--data` must be a folder, 'stdlib' or a TFDS name. Received: --data={data!r}")
        try:
            train = brt_data.TFDSSource(data, split="train", data_dir=data_dir, feature=text_feature)
        except ValueError as error:
            raise ValueError(
                f"`--data` names no folder here ({os.path.abspath(data)!r} does not exist), and no "
                f"prepared TFDS dataset of that name was found either: {error}"
            ) from None
        test = None
        if held_out and not eval_data:
            test = brt_data.TFDSSource(data, split=brt_data.TFDSSource.held_out_split(data, data_dir),
                                       data_dir=data_dir, feature=text_feature)
    if held_out and eval_data:
        test = brt_data.FolderSource(eval_data, pattern=pattern, encoding=encoding)
    return train, test


# Held-out data smaller than this many tokens (or than one segment for each lane, if
# more) gives bits per token that mean little: `check_held_out_size` warns.
MIN_HELD_OUT_TOKENS = 4096
# `report_data` reads at most this much of the data ahead, for its notices.
CHECK_BYTES = 256 * 2**20


def _size(count):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _names(source, files, most=5):
    root = getattr(source, "path", None)
    names = [os.path.relpath(f, root) if root else f for f in files]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def describe_data(source, pattern_flag="--pattern"):
    """The lines that say which documents a source reads: for a folder, how many files
    of how many in it match the pattern, and their size; and, when the pattern leaves
    out most of the folder, which extensions the other files have and how to pick them.

    Args:
        source: a document source, e.g. the training one of `resolve_data`.
        pattern_flag: the flag that set the pattern, for the lines.

    Returns:
        A list of lines, each starting with `"data: "`.
    """
    if not hasattr(source, "matching_files"):
        return [f"data: {source.name}"]
    stdlib = source.name.startswith("stdlib:")
    chose = f"match {pattern_flag + ' ' if not stdlib else ''}{source.pattern!r}"
    what = "this Python's standard library, " if stdlib else ""
    lines = [f"data: {what}{source.matching_files} "
             f"files of {source.folder_files} in {source.path} {chose} "
             f"({_size(source.matching_bytes)})"]
    dominant = [(ext, count) for ext, count in source.other_extensions.most_common(3)
                if ext and count > source.matching_files]
    if dominant and not stdlib:
        lines.append(
            f"data: most files in {source.path} do not match {source.pattern!r}: "
            + ", ".join(f"{count} *{ext}" for ext, count in dominant)
            + f"; to train on those, pass {pattern_flag} '*{dominant[0][0]}'"
        )
    return lines


def describe_held_out(source):
    """One line on where held-out data comes from.

    Args:
        source: a document source, e.g. the held-out one of `resolve_data`.

    Returns:
        The line, `"held-out data: ..."`.
    """
    describe = getattr(source, "describe_split", None)
    size = f", {_size(source.split_bytes())}" if hasattr(source, "split_bytes") else ""
    return f"held-out data: {describe() if describe else source.name}{size}"


def report_data(train_source, test_source=None, pattern_flag="--pattern"):
    """Prints, before a run reads its data, which documents it trains on and where its
    held-out data comes from (`describe_data`, `describe_held_out`); then reads the
    files ahead (up to `CHECK_BYTES` per source) and names those with undecodable
    bytes, not text (also warned about) or unreadable (`report_encoding`).

    Args:
        train_source: the training source, or `None` (evaluation only).
        test_source: the held-out source, or `None`.
        pattern_flag: the flag that set the pattern, for the lines.
    """
    if train_source is not None:
        for line in describe_data(train_source, pattern_flag):
            print(line, flush=True)
    if test_source is not None:
        if train_source is None or getattr(test_source, "path", None) != getattr(
                train_source, "path", None):
            for line in describe_data(test_source, pattern_flag):
                print(line.replace("data: ", "held-out data: ", 1), flush=True)
        print(describe_held_out(test_source), flush=True)
    for source, label in ((train_source, "training data"), (test_source, "held-out data")):
        if source is not None and hasattr(source, "check_files"):
            checked = source.check_files(CHECK_BYTES)
            report_encoding(source, label)
            if checked < len(source.files):
                print(f"{label}: checked the first {checked} of {len(source.files)} files for "
                      f"encoding errors ({_size(CHECK_BYTES)}); the others are reported when read",
                      flush=True)


def check_held_out_size(source, tokenizer, batch_size, segment_length, documents=0):
    """Warns when the held-out data is too small for its bits per token to mean much.

    Counts the tokens of the documents an evaluation reads (the first `documents`,
    or all), stopping once there are enough: at least `MIN_HELD_OUT_TOKENS`, and at
    least one `segment_length`-token segment for each of the `batch_size` lanes.

    Args:
        source: the held-out document source.
        tokenizer: the run's tokenizer.
        batch_size: lanes of the evaluation.
        segment_length: tokens per lane per step.
        documents: how many documents the evaluation reads (0: all).

    Returns:
        The tokens counted (up to the first document past the threshold).
    """
    import numpy as np

    needed = max(MIN_HELD_OUT_TOKENS, batch_size * segment_length)
    texts = source.documents(record=False) if hasattr(source, "check_files") else source.documents()
    tokens = count = 0
    more = False
    for text in texts:
        if documents and count == documents:
            more = True
            break
        count += 1
        tokens += int(np.size(tokenizer(text[:16 * needed])))  # a long document's start is enough
        if tokens >= needed:
            return tokens
    limited = (f", the first {documents}: --eval-documents {documents}, 0 evaluates every one"
               if more else "")
    warnings.warn(
        f"The held-out data is only {tokens} tokens ({count} document(s){limited}), fewer than "
        f"the {needed} needed (at least {MIN_HELD_OUT_TOKENS}, and one {segment_length}-token "
        f"segment for each of the {batch_size} lanes), so its bits per token mean little. Hold "
        f"out more (--held-out-fraction), evaluate on a folder of its own (--eval-data) or add "
        f"files. "
        f"Received: {describe_held_out(source)}",
        stacklevel=2,
    )
    return tokens


def report_encoding(source, label):
    """Prints a line naming the files with undecodable bytes, skipped as not text or
    unreadable that no earlier call named, if there are any.

    Args:
        source: a document source that has been read or checked (its
            `problem_files`, if it keeps any).
        label: what the lines start with, e.g. `"training data"`.
    """
    problems = getattr(source, "problem_files", None) or {}
    named = getattr(source, "reported_problem_files", set())
    kinds = (("files_with_encoding_errors",
              f"have bytes that are not valid {getattr(source, 'encoding', '')} (read as U+FFFD; "
              f"give the right --encoding, e.g. --encoding latin-1)"),
             ("skipped_not_text", "are skipped as not text (they hold NUL bytes)"),
             ("unreadable_files", "could not be read and are skipped"))
    for kind, what in kinds:
        new = [f for f in problems.get(kind, ()) if f not in named]
        if new:
            named.update(new)
            print(f"{label}: {len(new)} file(s) {what}: {_names(source, new)}", flush=True)
