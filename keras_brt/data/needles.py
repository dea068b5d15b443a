"""Needle recall: a synthetic check that a model's recurrent state carries information.

An episode is one document. Its first block holds `needles` random payload tokens at random
positions among filler tokens; `distance` blocks later a query block starts with a marker and
asks for the payload in order, teacher forced (inputs `marker, p1, p2, ...`, targets
`p1, p2, p3, ...`). Only the recalled tokens carry a loss weight. Beyond the reach of the
stacked sliding windows only a state can answer; chance is `1 / len(payload)`.

An episode is a whole number of training segments long, so a lane can stream episodes with
`start_of_sequence` at each episode's first segment, and a distance longer than a segment
makes the model carry its state across segment boundaries, where no gradient flows.

The default vocabulary (32 ids): 0 padding, 1 the marker, 2-9 filler, 10-31 payload (22 ids).

Example:

```python
rng = np.random.default_rng(0)
x, y, weights = needle_lanes(rng, steps=100, lanes=32, distances=range(1, 31),
                             block_size=8, segment_blocks=10)
lm.fit(x, y, sample_weight=weights, batch_size=32, shuffle=False)
accuracy = needle_recall_accuracy(lm, rng, distance=30, block_size=8, segment_blocks=10)
```
"""

import numpy as np

MARKER = 1
FILLER = np.arange(2, 10)
PAYLOAD = np.arange(10, 32)
VOCABULARY_SIZE = 32


def _check(distance, needles, block_size, segment_blocks):
    for name, value in (("needles", needles), ("block_size", block_size),
                        ("segment_blocks", segment_blocks)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    if isinstance(distance, bool) or not isinstance(distance, (int, np.integer)) or distance < 1:
        raise ValueError(f"`distance` must be a positive number of blocks. Received: distance={distance!r}")
    if needles > block_size:
        raise ValueError(
            f"`needles` must fit in one block of block_size={block_size} tokens. Received: needles={needles}"
        )


def needle_episode(rng, distance, needles=1, block_size=8, segment_blocks=10):
    """One episode as `(token_ids, targets, weights)`, 1-D arrays a whole number of
    segments (`segment_blocks * block_size` tokens) long."""
    _check(distance, needles, block_size, segment_blocks)
    blocks = segment_blocks * -(-(distance + 1) // segment_blocks)
    x = rng.choice(FILLER, blocks * block_size)
    payload = rng.choice(PAYLOAD, needles)
    x[np.sort(rng.choice(block_size, needles, replace=False))] = payload
    query = distance * block_size
    x[query] = MARKER
    x[query + 1:query + needles] = payload[:-1]
    y = np.zeros_like(x)
    weights = np.zeros(x.shape, "float32")
    y[query:query + needles] = payload
    weights[query:query + needles] = 1.0
    return x.astype("int32"), y.astype("int32"), weights


def needle_lanes(rng, steps, lanes, distances, needles=1, block_size=8, segment_blocks=10):
    """`steps` batches of `lanes` lanes, each lane a stream of episodes whose distances are
    drawn from `distances`, as arrays for `fit(..., batch_size=lanes, shuffle=False)`.

    Returns:
        `(x, y, weights)`: `x = {"token_ids", "start_of_sequence"}`, every array ordered
        (step, lane) with `steps * lanes` rows of `segment_blocks * block_size` tokens.
    """
    distances = list(distances)
    if not distances:
        raise ValueError(f"`distances` must name at least one distance. Received: distances={distances}")
    length = segment_blocks * block_size
    x = np.zeros((steps, lanes, length), "int32")
    y = np.zeros((steps, lanes, length), "int32")
    weights = np.zeros((steps, lanes, length), "float32")
    start = np.zeros((steps, lanes), bool)
    for lane in range(lanes):
        step = 0
        while step < steps:
            ex, ey, ew = needle_episode(rng, int(rng.choice(distances)), needles, block_size,
                                        segment_blocks)
            start[step, lane] = True
            for i in range(min(len(ex) // length, steps - step)):
                part = slice(i * length, (i + 1) * length)
                x[step + i, lane], y[step + i, lane], weights[step + i, lane] = ex[part], ey[part], ew[part]
            step += len(ex) // length
    flat = lambda a: a.reshape((steps * lanes,) + a.shape[2:])
    return {"token_ids": flat(x), "start_of_sequence": flat(start)}, flat(y), flat(weights)


def needle_recall_accuracy(lm, rng, distance, needles=1, block_size=8, segment_blocks=10,
                           episodes=256):
    """Fraction of recalled tokens `lm` predicts right at `distance` blocks, reading each
    episode segment by segment through `lm.call_with_state` with the state carried."""
    data = [needle_episode(rng, distance, needles, block_size, segment_blocks) for _ in range(episodes)]
    x, y, weights = (np.stack(column) for column in zip(*data))
    length = segment_blocks * block_size
    state, correct = None, []
    for start in range(0, x.shape[1], length):
        part = slice(start, start + length)
        logits, state = lm.call_with_state(x[:, part], state, np.full(episodes, start == 0))
        predicted = np.argmax(np.asarray(logits), axis=-1)
        correct.append((predicted == y[:, part])[weights[:, part] > 0])
    return float(np.mean(np.concatenate(correct)))
