"""Held-out evaluation over whole documents, with the state carried or cleared."""

import math

import numpy as np
from keras import ops

from keras_brt.models.compiling import compile_function  # noqa: F401 (re-exported)
from keras_brt.models.losses import token_cross_entropy

POSITION_BUCKET = 64  # tokens per point of the loss-by-position curve


def make_eval_step(lm):
    """A compiled step: `(x, y, weights, state, clear) -> (nats (B, T), new_state)`.

    With `clear` true, every recurrent layer's state vectors restart from the
    learned initial state at this segment (keys/values of the window are still
    carried): the paper's check that the model really uses its state. `clear`
    is a tensor, so both modes share one compiled function.
    """

    def step(x, y, weights, state, clear):
        initial = lm.initial_state(ops.shape(x["token_ids"])[0])
        cleared = lm.backbone.state_layout.state_vector_names
        state = {
            k: (ops.where(clear, ops.cast(initial[k], v.dtype), v) if k in cleared else v)
            for k, v in state.items()
        }
        logits, new_state = lm.call_with_state(
            x["token_ids"], state, x["start_of_sequence"], x["padding_mask"]
        )
        nats = token_cross_entropy(y, logits)
        return ops.where(weights > 0, nats, 0.0), new_state

    return compile_function(lm, step)


def evaluate_bits_per_token(lm, dataset, clear_state=False, max_batches=None, step=None,
                            progress=None):
    """Bits per token over a lane dataset, from fresh lanes, documents run to their end.

    Args:
        lm: a `BlockRecurrentTransformerCausalLM`.
        dataset: an iterable of `(x, y, sample_weight)` lane batches
            (`keras_brt.data.lane_dataset` without `repeat`).
        clear_state: reset the recurrent state vectors at every segment.
        max_batches: stop early (the result then covers partial documents).
        step: a function from `make_eval_step(lm)` to reuse (saves a compile).
        progress: optional callable `progress(batches, documents, tokens)`, called
            after every batch with the counts so far (documents started).

    Returns:
        A dict with `bits_per_token`, `tokens`, and `loss_by_position` /
        `tokens_by_position`: mean bits per token and token counts by
        position inside documents, one value per `POSITION_BUCKET` tokens
        counted from the document start.
    """
    step = step or make_eval_step(lm)
    clear = np.array(bool(clear_state))
    state, position = None, None
    total, count, documents = 0.0, 0.0, 0
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
        nats, state = step(x, y, weights, state, clear)
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
        documents += int(np.count_nonzero(x["start_of_sequence"] & (weights.sum(axis=1) > 0)))
        if progress is not None:
            progress(index + 1, documents, int(count))
    if count == 0:
        raise ValueError("The evaluation data held no token to predict. Received: an empty dataset")
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = sums / counts / math.log(2.0)
    return {"bits_per_token": total / count / math.log(2.0), "tokens": int(count),
            "loss_by_position": curve, "tokens_by_position": counts,
            "position_bucket": POSITION_BUCKET}
