"""The recurrence learns what a sliding window cannot: recall across many blocks."""

import keras
import numpy as np
import pytest

import keras_brt

W, BLOCKS, V = 8, 6, 32
PAYLOADS = np.arange(2, 10)  # chance level: 1 / 8


def recall_task(rng, batch):
    """Block 0 repeats a payload token, blocks 1-4 are random filler, the last block
    is a marker whose targets are the payload: 40 tokens back, beyond 2 layers x W."""
    payload = rng.choice(PAYLOADS, batch)
    x = rng.integers(10, V, (batch, BLOCKS * W))
    x[:, :W] = payload[:, None]
    x[:, -W:] = 1
    y = np.zeros_like(x)
    y[:, -W:] = payload[:, None]
    weights = np.zeros(x.shape, "float32")
    weights[:, -W:] = 1.0
    return x.astype("int32"), y.astype("int32"), weights


def train_and_score(recurrent_layers, steps=120, batch=64):
    keras.utils.set_random_seed(0)
    backbone = keras_brt.models.BlockRecurrentTransformerBackbone(
        V, 2, 32, 4, 8, 64, block_size=W, num_state_vectors=4,
        recurrent_layers=recurrent_layers, attention_scale_init=4.0,
    )
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM(backbone)
    lm.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True)
    x, y, weights = recall_task(np.random.default_rng(0), steps * batch)
    inputs = {"token_ids": x, "start_of_sequence": np.ones(len(x), bool)}
    lm.fit(inputs, y, sample_weight=weights, batch_size=batch, verbose=0)
    x, y, _ = recall_task(np.random.default_rng(1), 256)
    logits, _ = lm.call_with_state(x)
    return float((np.argmax(np.asarray(logits)[:, -W:], -1) == y[:, -W:]).mean())


@pytest.mark.slow
def test_recurrent_model_recalls_beyond_the_window_and_slide_cannot():
    rec = train_and_score((-1,))
    slide = train_and_score(())
    print(f"\nrecall accuracy (chance {1 / len(PAYLOADS):.3f}): Rec:fixed:skip {rec:.3f}, Slide {slide:.3f}")
    assert rec > 0.9
    assert slide < 0.3
