"""The state learns what a sliding window cannot: gradients reach its writes, and it recalls.

Before the state's initialisation was changed (bench/results/NOTES.md, "Making the state
learn"), the old recall test passed only because its payload filled a whole block, so a
block average was enough; one random token among filler, asked for a few blocks later, was
recalled at chance. These tests would have caught that.
"""

import os
import sys

import keras
import numpy as np
import pytest
from keras import ops

import keras_brt
from keras_brt.data.needles import PAYLOAD
from keras_brt.layers import BlockRecurrentCell, BlockRecurrentRNN
from tests.conftest import jax_pass_only

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
W, D = 4, 16
CELL = dict(hidden_dim=D, num_heads=2, head_dim=8, block_size=W, num_state_vectors=4,
            intermediate_dim=32)


def input_gradient(layer, x, block):
    """|d sum(outputs of `block`) / d inputs| per input block: `(N,)`."""

    def total(inputs):
        outputs = layer(inputs)
        outputs = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        return ops.sum(ops.reshape(outputs, (x.shape[0], -1, W, D))[:, block])

    if keras.backend.backend() == "jax":
        import jax

        grad = np.asarray(jax.grad(total)(ops.convert_to_tensor(x)))
    else:
        import tensorflow as tf

        inputs = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            value = total(inputs)
        grad = np.asarray(tape.gradient(value, inputs))
    return np.abs(grad).reshape(x.shape[0], -1, W, D).sum(axis=(0, 2, 3))


@pytest.mark.parametrize("parallel_token_path", [True, False])
def test_gradients_from_later_blocks_reach_the_tokens_the_state_read(parallel_token_path):
    x = np.random.default_rng(0).normal(size=(2, 6 * W, D)).astype("float32")
    rnn = BlockRecurrentRNN(BlockRecurrentCell(**CELL), parallel_token_path=parallel_token_path)
    grad = input_gradient(rnn, x, block=5)
    # The window of block 5 holds blocks 4 and 5: blocks 0-3 reach it only through the
    # state, which read them block by block.
    assert np.all(grad[:4] > 0), grad
    # The sliding-window layer, for contrast, has no path back beyond its window.
    slide = keras_brt.layers.SlidingWindowTransformerLayer(
        D, 2, 8, W, intermediate_dim=32)
    slide_grad = input_gradient(lambda t: slide(t, *slide.get_initial_state(2)), x, block=5)
    np.testing.assert_array_equal(slide_grad[:4], 0.0)
    assert slide_grad[4] > 0


@pytest.mark.slow
@jax_pass_only  # a training loop of keras.ops code; the backends' numerics are compared elsewhere
def test_rec_recalls_one_random_token_across_a_segment_and_slide_cannot():
    """examples/needle_recall.py: a 2-layer model trained on episodes of 2 to 6 blocks with
    segments of 4 blocks; recall at 6 blocks, across a segment boundary (no gradient there)."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        from needle_recall import train_and_recall
    finally:
        sys.path.pop(0)
    rec = train_and_recall((-1,))
    slide = train_and_recall(())
    chance = 1 / len(PAYLOAD)
    print(f"\nneedle recall at 6 blocks (chance {chance:.3f}): Rec:fixed:skip {rec:.3f}, Slide {slide:.3f}")
    assert rec >= 0.9
    assert slide < 3 * chance
