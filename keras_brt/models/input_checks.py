"""Token ids checked on the host, before a compiled step can see them.

A compiled step cannot raise on an id outside the vocabulary: the backbone
turns such rows into NaN, and a NaN loss would reach the weights. So `fit`,
`evaluate`, `predict` and the `*_on_batch` methods of the causal LM check the
ids of every batch before it enters a step: arrays at once, Python generators
and iterators batch by batch, and `tf.data` pipelines through an assertion
mapped over the pipeline (its failure is turned back into the same
`ValueError` by `reraising_out_of_vocabulary`).
"""

import contextlib
import re

import numpy as np

_MARKER = "keras_brt: token_ids outside the vocabulary"


def out_of_vocabulary_error(value, vocabulary_size):
    return ValueError(
        f"`token_ids` must lie in [0, vocabulary_size={vocabulary_size}); no weight was changed "
        f"by this batch. Received: token_ids={value}"
    )


def _token_ids_of(batch):
    """The token ids of a `(x, ...)` tuple, an `x` dict or an `x` array."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return x.get("token_ids") if isinstance(x, dict) else x


def _check_array(token_ids, vocabulary_size):
    if token_ids is None or not hasattr(token_ids, "shape") or hasattr(token_ids, "element_spec"):
        return
    ids = np.asarray(token_ids)
    if not ids.size or not np.issubdtype(ids.dtype, np.integer):
        return  # Shapes and dtypes are checked by the backbone, naming the argument.
    bad = ids[(ids < 0) | (ids >= vocabulary_size)]
    if bad.size:
        raise out_of_vocabulary_error(int(bad[0]), vocabulary_size)


def checked_inputs(x, vocabulary_size):
    """`x` with its token ids checked: arrays now, generators and datasets as they are read."""
    if hasattr(x, "element_spec"):  # A tf.data.Dataset (TensorFlow is installed then).
        # A dataset already distributed over replicas cannot be mapped: its ids reach the step
        # unchecked, where the backbone turns them into NaN rows (see the module docstring).
        return _checked_dataset(x, vocabulary_size) if hasattr(x, "map") else x
    if hasattr(x, "__next__") and not hasattr(x, "shape"):  # A generator or iterator of batches.
        return _checked_iterator(x, vocabulary_size)
    _check_array(_token_ids_of(x), vocabulary_size)
    return x


def _checked_iterator(iterator, vocabulary_size):
    for batch in iterator:
        _check_array(_token_ids_of(batch), vocabulary_size)
        yield batch


def _checked_dataset(dataset, vocabulary_size):
    import tensorflow as tf

    def check(*element):
        token_ids = _token_ids_of(element[0] if len(element) == 1 else element)
        if token_ids is None or not token_ids.dtype.is_integer:
            return element[0] if len(element) == 1 else element
        outside = tf.logical_or(token_ids < 0, token_ids >= vocabulary_size)
        first = tf.boolean_mask(token_ids, outside)[:1]
        with tf.control_dependencies([tf.debugging.Assert(
                tf.logical_not(tf.reduce_any(outside)), [_MARKER, first], summarize=1)]):
            identity = tf.identity(token_ids)
        x = element[0]
        if isinstance(x, dict):
            x = {**x, "token_ids": identity}
        else:
            x = identity
        return x if len(element) == 1 else (x, *element[1:])

    return dataset.map(check)


@contextlib.contextmanager
def reraising_out_of_vocabulary(vocabulary_size):
    """Turns a `tf.data` assertion of `_checked_dataset` (or a generator's ValueError that
    TensorFlow wrapped in its own error) back into the `ValueError` arrays get."""
    try:
        yield
    except ValueError:
        raise
    except Exception as error:
        message = str(getattr(error, "message", error))
        found = re.search(re.escape(_MARKER) + r"\D*\[?\s*(-?\d+)", message) or re.search(
            r"no weight was changed by this batch\. Received: token_ids=(-?\d+)", message)
        if _MARKER not in message and not found:
            raise
        raise out_of_vocabulary_error(found.group(1) if found else "an id outside it",
                                      vocabulary_size) from None
