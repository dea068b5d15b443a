"""Held-out evaluation over whole documents, with the state carried or cleared."""

import math

import keras
import numpy as np
from keras import ops

POSITION_BUCKET = 64  # tokens per point of the loss-by-position curve


def compile_function(lm, fn):
    """XLA-compiles `fn(*args)`, which may read `lm`'s variables, on the active backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=True)
    if backend == "jax":
        import jax

        variables = lm.variables

        def stateless(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*args)

        jitted = jax.jit(stateless)
        return lambda *args: jitted([v.value for v in variables], *args)
    return fn


def make_eval_step(lm, clear_state=False):
    """A compiled step: `(x, y, weights, state) -> (nats (B, T), new_state)`.

    With `clear_state`, every recurrent layer's state vectors restart from the
    learned initial state at each segment (keys/values of the window are still
    carried): the paper's check that the model really uses its state.
    """

    def step(x, y, weights, state):
        if clear_state:
            initial = lm.initial_state(ops.shape(x["token_ids"])[0])
            state = {k: (initial[k] if k.endswith("_state") else v) for k, v in state.items()}
        logits, new_state = lm.call_with_state(
            x["token_ids"], state, x["start_of_sequence"], x["padding_mask"]
        )
        nats = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        return ops.where(weights > 0, nats, 0.0), new_state

    return compile_function(lm, step)


def evaluate_bits_per_token(lm, dataset, clear_state=False, max_batches=None):
    """Bits per token over a lane dataset, from fresh lanes, documents run to their end.

    Args:
        lm: a `BlockRecurrentTransformerCausalLM`.
        dataset: an iterable of `(x, y, sample_weight)` lane batches
            (`keras_brt.data.lane_dataset` without `repeat`).
        clear_state: reset the recurrent state vectors at every segment.
        max_batches: stop early (the result then covers partial documents).

    Returns:
        A dict with `bits_per_token`, `tokens` and `loss_by_position`: mean
        bits per token by position inside documents, one value per
        `POSITION_BUCKET` tokens counted from the document start.
    """
    step = make_eval_step(lm, clear_state)
    state, position = None, None
    total, count = 0.0, 0.0
    sums, counts = np.zeros(0), np.zeros(0)  # bits by position bucket inside documents
    for index, (x, y, weights) in enumerate(dataset):
        if max_batches is not None and index >= max_batches:
            break
        x = {k: np.asarray(v) for k, v in x.items()}
        y, weights = np.asarray(y), np.asarray(weights)
        batch, length = y.shape
        if state is None:
            state = lm.initial_state(batch)
            position = np.zeros((batch,), np.int64)
        position = np.where(x["start_of_sequence"], 0, position)
        nats, state = step(x, y, weights, state)
        nats = np.asarray(nats, np.float64)
        total += float(nats.sum())
        count += float(weights.sum())
        # Positions of this segment's tokens inside each lane's document.
        pos = position[:, None] + np.arange(length)[None, :]
        buckets = (pos // POSITION_BUCKET)[weights > 0]
        if buckets.size and buckets.max() >= sums.size:
            grow = int(buckets.max()) + 1 - sums.size
            sums, counts = np.pad(sums, (0, grow)), np.pad(counts, (0, grow))
        np.add.at(sums, buckets, nats[weights > 0])
        np.add.at(counts, buckets, 1.0)
        position = position + length
    if count == 0:
        raise ValueError("The evaluation data held no token to predict. Received: an empty dataset")
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = sums / counts / math.log(2.0)
    return {"bits_per_token": total / count / math.log(2.0), "tokens": int(count),
            "loss_by_position": curve, "position_bucket": POSITION_BUCKET}
