"""Document sources: a folder of text files, any iterable of strings, TFDS, the stdlib corpus.

A source is an object with `documents()`, a fresh iterator of `str` documents each
time it is called (so a training run can repeat it), and `name`. Documents are
yielded one at a time: a book is read when its turn comes, never all at once.
"""

import codecs
import collections
import fnmatch
import hashlib
import os
import sysconfig
import warnings


def _held_out(key, fraction):
    """Deterministic split: a document is held out by a hash of its name."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


class FolderSource:
    """Every text file under a folder (recursive), matching a glob pattern.

    Held-out data: with `split`, files are divided by a hash of their relative
    path (`held_out_fraction` of them held out, the same files every time) when
    that leaves at least one file on each side. A folder too small for that is
    divided inside every file instead: the last `held_out_fraction` of each
    file's bytes is held out and the rest is trained on. `split_mode` says which
    (`"files"` or `"tails"`), `describe_split()` says it in words.

    Files are read as bytes and decoded with `encoding`; bytes that are not
    valid there are replaced (U+FFFD) and the files counted. A file with a NUL
    byte is not text: it is skipped with a warning naming it. `stats` counts
    the files read, the files with undecodable bytes, the files skipped as not
    text, the unreadable files, and the bytes read from disk for the documents
    yielded (`last_document_bytes` holds the last document's), so that bits
    per byte are counted on the file's own bytes, whatever the encoding;
    `problem_files` names those files (by kind, as the keys of a dict, in the
    order found).
    `check_files()` reads the files ahead, so that they are known before a
    run starts.

    What the pattern chose: `matching_files` and `matching_bytes` (every
    matching file, both splits), `folder_files` (every file under the folder
    that is not excluded or hidden) and `other_extensions` (a `Counter` of the
    extensions of the files the pattern left out).

    Args:
        path: the folder.
        pattern: glob pattern of file names, e.g. `"*.txt"` or `"*.py"`.
        split: `"train"`, `"test"` or None (every file, whole).
        held_out_fraction: share of the files (or of each file's bytes) held out.
        encoding: text encoding of the files, e.g. `"utf-8"` or `"latin-1"`.
        exclude: glob patterns of relative paths to skip.

    Example:

    ```python
    train = keras_brt.data.FolderSource("books/", split="train")
    test = keras_brt.data.FolderSource("books/", split="test")
    print(test.describe_split())
    ```
    """

    def __init__(self, path, pattern="*.txt", split=None, held_out_fraction=0.05,
                 encoding="utf-8", exclude=()):
        if not os.path.isdir(path):
            raise ValueError(f"`path` must be an existing folder of text files. Received: path={path!r}")
        if split not in (None, "train", "test"):
            raise ValueError(f"`split` must be 'train', 'test' or None. Received: split={split!r}")
        if not 0 < held_out_fraction < 1:
            raise ValueError(
                f"`held_out_fraction` must lie strictly between 0 and 1. Received: "
                f"held_out_fraction={held_out_fraction!r}"
            )
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"Unknown text encoding. Received: encoding={encoding!r}") from None
        self.path, self.pattern, self.split = path, pattern, split
        self.held_out_fraction, self.encoding, self.exclude = held_out_fraction, encoding, tuple(exclude)
        self.name = f"folder:{path}"
        self.files, self.split_mode = self._list_files()
        self._warned = set()  # each file that is not text is named once
        self.problem_files = {"files_with_encoding_errors": {}, "skipped_not_text": {},
                              "unreadable_files": {}}  # ordered sets: {path: None}
        self.reported_problem_files = set()  # those named already (`training.report_encoding`)
        if not self.files:
            raise ValueError(f"No file matching {pattern!r} under `path`. Received: path={path!r}")
        self._reset_stats()
        if next(self.documents(), None) is None:
            raise ValueError(
                f"None of the {len(self.files)} files matching {pattern!r} under `path` holds readable "
                f"text. Received: path={path!r}"
            )
        self._reset_stats()

    def _reset_stats(self):
        self.stats = {"files": 0, "files_with_encoding_errors": 0, "skipped_not_text": 0,
                      "unreadable_files": 0, "bytes": 0}
        self.last_document_bytes = 0
        self._noted = set()

    def _list_files(self):
        files, held = [], []
        self.folder_files, self.other_extensions, self.matching_bytes = 0, collections.Counter(), 0
        for root, dirs, names in os.walk(self.path):
            dirs.sort()
            hidden = any(part.startswith(".") for part in
                         os.path.relpath(root, self.path).split(os.sep) if part != ".")
            for name in sorted(names):
                full = os.path.join(root, name)
                rel = os.path.relpath(full, self.path)
                if any(fnmatch.fnmatch(rel, p) for p in self.exclude):
                    continue
                counted = not hidden and not name.startswith(".")  # .git/ and the like: not counted
                self.folder_files += counted
                if not fnmatch.fnmatch(name, self.pattern):
                    if counted:
                        self.other_extensions[os.path.splitext(name)[1].lower()] += 1
                    continue
                files.append(full)
                held.append(_held_out(rel, self.held_out_fraction))
                try:
                    self.matching_bytes += os.path.getsize(full)
                except OSError:
                    pass  # reported as unreadable when read
        self.matching_files = len(files)
        if self.split is None:
            return files, None
        if len(files) * self.held_out_fraction >= 1 and 0 < sum(held) < len(files):
            want = self.split == "test"
            return [f for f, h in zip(files, held) if h == want], "files"
        return files, "tails"

    def split_bytes(self):
        """The bytes of this source's files on disk: of its part of each file in the
        `tails` split (files never read count whole)."""
        total = 0
        for full in self.files:
            try:
                size = os.path.getsize(full)
            except OSError:
                continue
            if self.split_mode == "tails":
                cut = int(size * (1 - self.held_out_fraction))
                size = size - cut if self.split == "test" else cut
            total += size
        return total

    def describe_split(self):
        """Where the held-out data comes from, in one sentence."""
        percent = f"{self.held_out_fraction:.0%}"
        if self.split_mode == "files":
            return f"{len(self.files)} whole files ({self.split} split, {percent} of the files held out)"
        if self.split_mode == "tails":
            return (f"the {'last ' + percent if self.split == 'test' else 'first part'} of each of the "
                    f"{len(self.files)} files (too few files to hold out whole ones; --held-out-fraction "
                    f"{self.held_out_fraction})")
        return f"all {len(self.files)} files"

    def _note(self, kind, full, record=True):
        self.problem_files[kind][full] = None
        if kind == "skipped_not_text" and full not in self._warned:
            self._warned.add(full)
            warnings.warn(f"Skipping {full}: not a text file (it holds NUL bytes).", stacklevel=4)
        if record and (kind, full) not in self._noted:
            self._noted.add((kind, full))
            self.stats[kind] += 1

    def _read(self, full, record=True):
        """`(text, bytes read)` of one file, its part in the `tails` split; `(None, 0)`
        for a file that cannot be read or is not text."""
        try:
            with open(full, "rb") as f:
                raw = f.read()
        except OSError:
            self._note("unreadable_files", full, record)
            return None, 0
        if b"\0" in raw:
            self._note("skipped_not_text", full, record)
            return None, 0
        if self.split_mode == "tails":
            cut = int(len(raw) * (1 - self.held_out_fraction))
            while cut < len(raw) and (raw[cut] & 0xC0) == 0x80:  # not inside a UTF-8 character
                cut += 1
            raw = raw[cut:] if self.split == "test" else raw[:cut]
        try:
            text = raw.decode(self.encoding)
        except UnicodeDecodeError:
            self._note("files_with_encoding_errors", full, record)
            text = raw.decode(self.encoding, errors="replace")
        return text, len(raw)

    def check_files(self, max_bytes=256 * 2**20):
        """Reads the files ahead, without counting them in `stats`, so that the files
        with undecodable bytes, not text or unreadable are in `problem_files` (and
        the files that are not text are warned about) before a run reads them.

        Args:
            max_bytes: stop once this many bytes have been read (the files after
                that are checked when they are read).

        Returns:
            How many of `files` were checked.
        """
        checked = read = 0
        for full in self.files:
            if read >= max_bytes:
                break
            read += self._read(full, record=False)[1]
            checked += 1
        return checked

    def documents(self, record=True):
        """The documents, one per readable text file (its part in the `tails` split).

        Args:
            record: count what is read in `stats` (`False`: read without counting).
        """
        for full in self.files:
            text, size = self._read(full, record)
            if text is None:
                continue
            if record:
                self.stats["files"] += 1
            if text and record:
                self.stats["bytes"] += size
                self.last_document_bytes = size
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
