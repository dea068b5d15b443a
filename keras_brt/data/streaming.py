"""Lanes: B document streams cut into consecutive segments of T tokens.

Lane i reads one document after another. Every batch holds the next T tokens of
every lane, `start_of_sequence[i]` is true where lane i starts a new document,
the tail of a document is padded (and masked through `sample_weight` and
`padding_mask`), and the next batch of lane i continues exactly where this one
stopped. This is meliad's `_batched_interleave_generator`, in tf.data with static
shapes (TPU-ready). Documents (never segments) are shuffled.
"""

import numpy as np


def lane_batches(token_documents, batch_size, segment_length, bos_id=1):
    """Packs an iterator of 1-D token arrays into lane batches (numpy).

    Each document is prefixed with `bos_id` so its first token is predicted too.
    Targets are the next tokens; a document's last token is only a target.
    When the documents run out, finished lanes idle (all padding, weight 0)
    until every lane is done.

    Yields:
        `(x, y, sample_weight)` with `x = {"token_ids", "start_of_sequence",
        "padding_mask"}`, all of static shapes `(B, T)` / `(B,)`.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1. Received: batch_size={batch_size}")
    if segment_length < 1:
        raise ValueError(f"`segment_length` must be at least 1. Received: segment_length={segment_length}")
    docs = iter(token_documents)
    lanes = [None] * batch_size
    offsets = [0] * batch_size
    exhausted = False
    while True:
        x = np.zeros((batch_size, segment_length), np.int32)
        y = np.zeros((batch_size, segment_length), np.int32)
        weights = np.zeros((batch_size, segment_length), np.float32)
        start = np.zeros((batch_size,), bool)
        for i in range(batch_size):
            if lanes[i] is None or offsets[i] >= len(lanes[i]) - 1:
                lanes[i] = None
                while lanes[i] is None and not exhausted:
                    doc = next(docs, None)
                    if doc is None:
                        exhausted = True
                    elif len(doc):
                        lanes[i] = np.concatenate([[bos_id], np.asarray(doc, np.int32)])
                        offsets[i] = 0
                start[i] = True  # A new document, or an idle lane: fresh state.
                if lanes[i] is None:
                    continue
            doc, o = lanes[i], offsets[i]
            n = min(segment_length, len(doc) - 1 - o)
            x[i, :n] = doc[o : o + n]
            y[i, :n] = doc[o + 1 : o + 1 + n]
            weights[i, :n] = 1.0
            offsets[i] = o + segment_length
        if all(lane is None for lane in lanes):
            return
        yield (
            {"token_ids": x, "start_of_sequence": start, "padding_mask": weights > 0},
            y,
            weights,
        )


def shuffled(items, buffer_size, rng):
    """Items in a random order through a buffer of `buffer_size` (0 or 1: in order), as
    `tf.data.Dataset.shuffle` does: each item out is drawn from the buffer, refilled as it goes."""
    if buffer_size <= 1:
        yield from items
        return
    buffer = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.integers(len(buffer))
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


def lane_dataset(source, tokenizer, batch_size, segment_length, repeat=False,
                 shuffle_buffer=0, seed=0, input_context=None):
    """A `tf.data.Dataset` of lane batches from a document source.

    Args:
        source: an object with `documents()` (see `keras_brt.data.sources`).
        tokenizer: a tokenizer layer mapping a string scalar to 1-D int ids.
        batch_size: number of lanes B (the global batch of one replica set).
        segment_length: tokens per lane per batch T.
        repeat: cycle over the documents forever (training).
        shuffle_buffer: shuffle documents with this buffer (0: keep order).
        seed: shuffling seed (documents are reshuffled every pass, reproducibly).
        input_context: a `tf.distribute.InputContext`: each input pipeline
            reads its own shard of the documents.

    Returns:
        A dataset of `(x, y, sample_weight)` as in `lane_batches`.
    """
    import tensorflow as tf  # lane_batches alone works without TensorFlow

    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1. Received: batch_size={batch_size}")

    shards, shard = 1, 0
    if input_context is not None and input_context.num_input_pipelines > 1:
        shards, shard = input_context.num_input_pipelines, input_context.input_pipeline_id

    def token_documents():
        # Plain Python, not a second tf.data pipeline inside this one's generator: destroying a
        # nested pipeline when fit ends waited for its shuffle buffer to refill (up to a minute).
        rng = np.random.default_rng(seed)
        for text in shuffled(documents(), shuffle_buffer, rng):
            yield np.asarray(tokenizer(tf.constant(text)))

    def documents():
        while True:
            for index, text in enumerate(source.documents()):
                if index % shards == shard:
                    yield text
            if not repeat:
                return

    bos = getattr(tokenizer, "bos_id", 1)
    spec = (
        {
            "token_ids": tf.TensorSpec((batch_size, segment_length), tf.int32),
            "start_of_sequence": tf.TensorSpec((batch_size,), tf.bool),
            "padding_mask": tf.TensorSpec((batch_size, segment_length), tf.bool),
        },
        tf.TensorSpec((batch_size, segment_length), tf.int32),
        tf.TensorSpec((batch_size, segment_length), tf.float32),
    )
    dataset = tf.data.Dataset.from_generator(
        lambda: lane_batches(token_documents(), batch_size, segment_length, bos),
        output_signature=spec,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)
