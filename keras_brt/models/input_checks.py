"""Batches checked on the host, before a compiled step can see them.

A compiled step cannot raise a clear error: the backbone turns a token id outside
the vocabulary into NaN rows, a target outside it makes the loss NaN, and a batch
whose rows differ from the model's lanes or whose targets have another shape fails
while the step is traced. On the JAX backend a step that raises also leaves Keras's
trainer without its state, so every later `fit`, `predict` or `generate` of the
model fails (keras-team/keras#21019). So `fit`, `evaluate`, `predict` and the
`*_on_batch` methods of the causal LM check every batch before it enters a step:

- the token ids and the targets (`y`, the next-token ids) lie in the vocabulary;
- the targets have the shape of the token ids;
- each batch has as many rows as the model has lanes.

Arrays are checked at once, Python generators and iterators batch by batch, and
`tf.data` pipelines through assertions mapped over the pipeline (whose failure
`reraising_bad_batches` turns back into the same `ValueError`).
"""

import contextlib
import re

import numpy as np

_MARKER = "keras_brt: bad batch"
_TARGETS = "`y` (the next-token targets)"


def out_of_vocabulary_error(value, vocabulary_size, name="token_ids"):
    label = "`token_ids`" if name == "token_ids" else _TARGETS
    return ValueError(
        f"{label} must lie in [0, vocabulary_size={vocabulary_size}); no weight was changed "
        f"by this batch. Received: {name}={value}"
    )


def target_shape_error(target_shape, ids_shape):
    return ValueError(
        f"{_TARGETS} must have the shape of `token_ids`, one target per token. Received: "
        f"y.shape={tuple(target_shape)} and token_ids.shape={tuple(ids_shape)}"
    )


def lane_rows_error(lanes, rows, detail=""):
    return ValueError(
        f"The model carries {lanes} lanes (batch rows) from batch to batch; every batch must "
        f"have that many rows (with tf.data, batch with drop_remainder=True). Received: a "
        f"batch of {rows} row{'' if rows == 1 else 's'}{detail}. For another batch size use call_with_state() or a "
        "new model."
    )


def _split(batch):
    """`(token_ids, targets)` of a `(x, y, ...)` tuple, an `x` dict or an `x` array."""
    if isinstance(batch, (tuple, list)):
        x, y = batch[0], batch[1] if len(batch) > 1 else None
    else:
        x, y = batch, None
    return (x.get("token_ids") if isinstance(x, dict) else x), y


def _array(value):
    if value is None or not hasattr(value, "shape") or hasattr(value, "element_spec"):
        return None
    array = np.asarray(value)
    return array if array.size and array.dtype.kind in "iuf" else None


def _check_ids(ids, vocabulary_size, name):
    bad = ids[(ids < 0) | (ids >= vocabulary_size)]
    if bad.size:
        value = bad.flat[0]
        raise out_of_vocabulary_error(int(value) if float(value).is_integer() else float(value),
                                      vocabulary_size, name)


def _check_arrays(token_ids, targets, vocabulary_size, lanes=None, batch_size=None):
    """Checks in-memory arrays; `batch_size` is the rows per batch that Keras will cut
    them into (`lanes` rows each, the last batch included), None for one batch."""
    ids = _array(token_ids)
    if ids is not None and ids.dtype.kind in "iu":  # Other dtypes: the backbone names them.
        _check_ids(ids, vocabulary_size, "token_ids")
    y = _array(targets)
    if y is not None:
        if ids is not None and y.shape != ids.shape:
            raise target_shape_error(y.shape, ids.shape)
        _check_ids(y, vocabulary_size, "y")
    if lanes is None or ids is None or ids.ndim != 2:
        return
    rows = ids.shape[0]
    per_batch = min(batch_size or 32, rows)  # Keras's default batch size is 32
    if per_batch != lanes:
        raise lane_rows_error(lanes, per_batch, f" ({rows} rows of token_ids, batch_size="
                                                f"{batch_size})")
    if rows % lanes:
        raise lane_rows_error(lanes, rows % lanes, f" (the last of {rows} rows of token_ids "
                                                   f"in batches of {lanes})")


def checked_inputs(x, vocabulary_size, y=None, lanes=None, batch_size=None):
    """`x` with its batches checked: arrays now, generators and datasets as they are read.

    Args:
        x: what `fit`/`evaluate`/`predict` take: arrays, a dict of them, a generator or
            iterator of `(x, y, ...)` batches, or a `tf.data.Dataset`.
        vocabulary_size: the model's.
        y: the targets given beside in-memory `x`, if any.
        lanes: the model's lane count (the rows every batch must have), if known.
        batch_size: the `batch_size` given with in-memory `x`.
    """
    if hasattr(x, "element_spec"):  # A tf.data.Dataset (TensorFlow is installed then).
        # A dataset already distributed over replicas cannot be mapped: its ids reach the step
        # unchecked, where the backbone turns them into NaN rows (see the module docstring).
        return _checked_dataset(x, vocabulary_size, lanes) if hasattr(x, "map") else x
    if hasattr(x, "__next__") and not hasattr(x, "shape"):  # A generator or iterator of batches.
        return _checked_iterator(x, vocabulary_size, lanes)
    token_ids, targets = _split(x)
    _check_arrays(token_ids, y if y is not None else targets, vocabulary_size, lanes, batch_size)
    return x


def checked_batch(x, vocabulary_size, y=None, lanes=None):
    """Checks one batch given to a `*_on_batch` method (all its rows are one batch)."""
    token_ids, _ = _split(x)
    ids = _array(token_ids)
    _check_arrays(token_ids, y, vocabulary_size, lanes, None if ids is None else ids.shape[0])


def _checked_iterator(iterator, vocabulary_size, lanes):
    for batch in iterator:
        checked_batch(batch, vocabulary_size, _split(batch)[1], lanes)
        yield batch


def _checked_dataset(dataset, vocabulary_size, lanes):
    import tensorflow as tf

    def check(*element):
        batch = element[0] if len(element) == 1 else element
        token_ids, targets = _split(batch)
        if token_ids is None or not token_ids.dtype.is_integer:
            return batch
        checks = []
        outside = tf.logical_or(token_ids < 0, token_ids >= vocabulary_size)
        checks.append(tf.debugging.Assert(tf.logical_not(tf.reduce_any(outside)), [
            _MARKER, "token_ids", tf.boolean_mask(token_ids, outside)[:1]], summarize=1))
        if targets is not None and (targets.dtype.is_integer or targets.dtype.is_floating):
            same = tf.reduce_all(tf.equal(tf.shape(targets), tf.shape(token_ids))) if (
                targets.shape.rank == token_ids.shape.rank) else tf.constant(False)
            checks.append(tf.debugging.Assert(same, [
                _MARKER, "shape", tf.shape(targets), tf.shape(token_ids)], summarize=8))
            values = tf.cast(targets, "float64")
            outside = tf.logical_or(values < 0, values >= vocabulary_size)
            checks.append(tf.debugging.Assert(tf.logical_not(tf.reduce_any(outside)), [
                _MARKER, "y", tf.boolean_mask(targets, outside)[:1]], summarize=1))
        if lanes is not None and token_ids.shape.rank == 2:
            checks.append(tf.debugging.Assert(tf.equal(tf.shape(token_ids)[0], lanes), [
                _MARKER, "rows", tf.shape(token_ids)[0]], summarize=1))
        with tf.control_dependencies(checks):
            identity = tf.identity(token_ids)
        x = batch[0] if isinstance(batch, tuple) else batch
        x = {**x, "token_ids": identity} if isinstance(x, dict) else identity
        return (x, *batch[1:]) if isinstance(batch, tuple) else x

    return dataset.map(check)


def _numbers(text):
    return [int(float(n)) if float(n).is_integer() else float(n)
            for n in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)]


@contextlib.contextmanager
def reraising_bad_batches(vocabulary_size, lanes=None):
    """Turns an assertion of `_checked_dataset` (or a generator's ValueError that
    TensorFlow wrapped in its own error) back into the `ValueError` arrays get."""
    try:
        yield
    except ValueError:
        raise
    except Exception as error:
        message = str(getattr(error, "message", error))
        found = re.search(re.escape(_MARKER) + r"\W*(token_ids|shape|y|rows)\W*(.*)", message)
        if found:
            kind, numbers = found.group(1), _numbers(found.group(2).split("\n")[0])
            if kind == "shape" and len(numbers) >= 2:
                half = len(numbers) // 2
                raise target_shape_error(numbers[:half], numbers[half:]) from None
            if kind == "rows" and numbers:
                raise lane_rows_error(lanes, numbers[0]) from None
            raise out_of_vocabulary_error(numbers[0] if numbers else "an id outside it",
                                          vocabulary_size, kind) from None
        # A generator's own ValueError, which TensorFlow's data adapter wraps in its own error.
        wrapped = re.search(r"((?:`token_ids` must lie|`y` \(the next-token targets\)|The model "
                            r"carries \d+ lanes)[^\n]*)", message)
        if wrapped:
            raise ValueError(wrapped.group(1)) from None
        raise

