"""Document sources: a folder of text files, any iterable of strings, TFDS, the stdlib corpus.

A source is an object with `documents()`, a fresh iterator of `str` documents each
time it is called (so a training run can repeat it), and `name`. Documents are
yielded one at a time: a book is read when its turn comes, never all at once.
"""

import fnmatch
import hashlib
import os
import sysconfig


def _held_out(key, fraction):
    """Deterministic split: a document is held out by a hash of its name."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


class FolderSource:
    """Every text file under a folder (recursive), matching a glob pattern.

    Undecodable bytes are replaced, not fatal; `stats` counts the files read,
    the files with encoding errors and the files that could not be read at all.

    Args:
        path: the folder.
        pattern: glob pattern of file names, e.g. `"*.txt"` or `"*.py"`.
        split: `"train"`, `"test"` or None (every file). Files are split by a
            hash of their relative path, so the split never changes.
        held_out_fraction: share of files in the `"test"` split.
        encoding: text encoding of the files.
        exclude: glob patterns of relative paths to skip.
    """

    def __init__(self, path, pattern="*.txt", split=None, held_out_fraction=0.05,
                 encoding="utf-8", exclude=()):
        if not os.path.isdir(path):
            raise ValueError(f"`path` must be an existing folder of text files. Received: path={path!r}")
        if split not in (None, "train", "test"):
            raise ValueError(f"`split` must be 'train', 'test' or None. Received: split={split!r}")
        self.path, self.pattern, self.split = path, pattern, split
        self.held_out_fraction, self.encoding, self.exclude = held_out_fraction, encoding, tuple(exclude)
        self.name = f"folder:{path}"
        self.stats = {"files": 0, "files_with_encoding_errors": 0, "unreadable_files": 0}
        self.files = self._list_files()
        if not self.files:
            raise ValueError(
                f"No file matching {pattern!r} (split={split!r}) under `path`. Received: path={path!r}"
            )
        if next(self.documents(), None) is None:
            raise ValueError(
                f"None of the {len(self.files)} files matching {pattern!r} under `path` holds readable "
                f"text. Received: path={path!r}"
            )
        self.stats = {"files": 0, "files_with_encoding_errors": 0, "unreadable_files": 0}

    def _list_files(self):
        files = []
        for root, dirs, names in os.walk(self.path):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(root, name)
                rel = os.path.relpath(full, self.path)
                if not fnmatch.fnmatch(name, self.pattern):
                    continue
                if any(fnmatch.fnmatch(rel, p) for p in self.exclude):
                    continue
                if self.split is not None and _held_out(rel, self.held_out_fraction) != (self.split == "test"):
                    continue
                files.append(full)
        return files

    def documents(self):
        for full in self.files:
            try:
                with open(full, "rb") as f:
                    raw = f.read()
            except OSError:
                self.stats["unreadable_files"] += 1
                continue
            try:
                text = raw.decode(self.encoding)
            except UnicodeDecodeError:
                self.stats["files_with_encoding_errors"] += 1
                text = raw.decode(self.encoding, errors="replace")
            self.stats["files"] += 1
            if text:
                yield text


class IterableSource:
    """Any iterable of strings (a list, a generator factory, a file's lines...).

    Args:
        documents: an iterable of `str`, or a zero-argument callable returning
            one (needed to repeat a generator).
        name: a label for logs.
    """

    def __init__(self, documents, name="iterable"):
        self._documents = documents
        self.name = name

    def documents(self):
        source = self._documents() if callable(self._documents) else self._documents
        for text in source:
            if not isinstance(text, str):
                raise ValueError(f"Documents must be str. Received: {type(text).__name__}")
            if text:
                yield text


def stdlib_source(split="train", held_out_fraction=0.05):
    """The built-in default corpus: the source files of this Python's standard library.

    Real, long code documents (like the paper's GitHub set), found through
    `sysconfig`, with no download. Split into train and held-out by file.
    """
    root = sysconfig.get_paths()["stdlib"]
    source = FolderSource(
        root, pattern="*.py", split=split, held_out_fraction=held_out_fraction,
        exclude=("site-packages/*", "dist-packages/*", "*/__pycache__/*"),
    )
    source.name = f"stdlib:{split}"
    return source


class TFDSSource:
    """A text feature of a TensorFlow Datasets dataset, read offline from `data_dir`.

    Nothing is downloaded (`download=False`): prepare the dataset once on a machine
    with network access (`tfds build pg19 --data_dir DIR`) and copy `DIR` over.

    Args:
        name: TFDS name, optionally versioned (`"pg19"`, `"pg19:0.1.1"`).
        split: a TFDS split, e.g. `"train"`, `"validation"`, `"train[:95%]"`.
        data_dir: the folder holding prepared datasets.
        feature: the text feature; default `"book_text"` for PG19, otherwise the
            only string feature (or `"text"`).
    """

    def __init__(self, name, split="train", data_dir=None, feature=None):
        import tensorflow_datasets as tfds

        self.name = f"tfds:{name}:{split}"
        try:
            self._dataset, info = tfds.load(
                name, split=split, data_dir=data_dir, download=False, with_info=True,
                shuffle_files=False,
            )
        except Exception as error:  # tfds raises several types for a missing dataset
            raise ValueError(
                f"TFDS dataset {name!r} (split {split!r}) is not prepared in data_dir={data_dir!r}. "
                f"This package never downloads: on a machine with network access run "
                f"`tfds build {name.split(':')[0]} --data_dir DIR` (or `tfds.builder({name.split(':')[0]!r}, "
                f"data_dir=DIR).download_and_prepare()`), copy DIR here and pass it as data_dir "
                f"(--data-dir). Received: name={name!r}, data_dir={data_dir!r} ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''})"
            ) from None
        self.info = info
        import tensorflow as tf

        text_features = [k for k, v in info.features.items() if getattr(v, "tf_dtype", None) == tf.string]
        if feature is None:
            if "book_text" in info.features:
                feature = "book_text"
            elif "text" in info.features:
                feature = "text"
            elif len(text_features) == 1:
                feature = text_features[0]
        if feature not in info.features:
            raise ValueError(
                f"`feature` must name a text feature of {name!r}: one of {sorted(info.features)}. "
                f"Received: feature={feature!r}"
            )
        self.feature = feature

    def documents(self):
        for example in self._dataset.as_numpy_iterator():
            text = example[self.feature]
            text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
            if text:
                yield text

    @staticmethod
    def held_out_split(name, data_dir=None):
        """The held-out split of a prepared dataset: validation, else test, else 5% of train."""
        import tensorflow_datasets as tfds

        try:
            splits = tfds.builder(name, data_dir=data_dir).info.splits
        except Exception:
            return "test"
        for split in ("validation", "test"):
            if split in splits:
                return split
        return "train[95%:]"
