"""Which documents a run trains and is evaluated on: `resolve_data` and its reports.

Errors name the `keras-brt train` flags (`--data`, `--eval-data`, ...) of the
arguments, as the command line passes them through unchanged.
"""

import os


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


def describe_held_out(source):
    """One line on where held-out data comes from.

    Args:
        source: a document source, e.g. the held-out one of `resolve_data`.

    Returns:
        The line, `"held-out data: ..."`.
    """
    describe = getattr(source, "describe_split", None)
    return f"held-out data: {describe() if describe else source.name}"


def report_encoding(source, label):
    """Prints a line on files with undecodable bytes or skipped as not text, if there were any.

    Args:
        source: a document source that has been read (its `stats`, if it keeps any).
        label: what the line starts with, e.g. `"training data"`.
    """
    stats = getattr(source, "stats", None) or {}
    notes = []
    if stats.get("files_with_encoding_errors"):
        notes.append(f"{stats['files_with_encoding_errors']} file(s) had bytes that are not valid "
                     f"{source.encoding} (replaced by U+FFFD; give the right --encoding)")
    if stats.get("skipped_not_text"):
        notes.append(f"{stats['skipped_not_text']} file(s) skipped as not text")
    if notes:
        print(f"{label}: " + "; ".join(notes), flush=True)
