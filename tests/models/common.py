"""Tiny model configurations and helpers shared by the model and training tests."""

import keras
import numpy as np

import keras_brt

V, W = 40, 4
TINY = dict(
    vocabulary_size=V,
    num_layers=3,
    hidden_dim=16,
    num_heads=2,
    head_dim=8,
    intermediate_dim=32,
    block_size=W,
    num_state_vectors=3,
    recurrent_layers=(1,),
)


def make_lm(**overrides):
    backbone = keras_brt.models.BlockRecurrentTransformerBackbone(**{**TINY, **overrides})
    return keras_brt.models.BlockRecurrentTransformerCausalLM(backbone)


def token_ids(batch=2, length=24, seed=0):
    return np.random.default_rng(seed).integers(0, V, (batch, length)).astype("int32")


def numpy_state(state):
    return {k: np.asarray(v) for k, v in state.items()}


class StepLosses(keras.callbacks.Callback):
    """Records every training step's own loss.

    Keras logs the running mean of the loss since the epoch began; each step's
    loss is recovered from consecutive means (the batches have equal weight).
    """

    def __init__(self):
        super().__init__()
        self.losses = []
        self._mean = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._mean = 0.0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        self.losses.append((batch + 1) * mean - batch * self._mean)
        self._mean = mean


# The long-range recall task (tests/models/test_learning.py and bench/quality.py).
RECALL_W, BLOCKS, RECALL_V = 8, 6, 32
PAYLOADS = np.arange(2, 10)  # chance level: 1 / 8


def recall_task(rng, batch):
    """Block 0 repeats a payload token, blocks 1-4 are random filler, the last block
    is a marker whose targets are the payload: 40 tokens back, beyond 2 layers x RECALL_W."""
    payload = rng.choice(PAYLOADS, batch)
    x = rng.integers(10, RECALL_V, (batch, BLOCKS * RECALL_W))
    x[:, :RECALL_W] = payload[:, None]
    x[:, -RECALL_W:] = 1
    y = np.zeros_like(x)
    y[:, -RECALL_W:] = payload[:, None]
    weights = np.zeros(x.shape, "float32")
    weights[:, -RECALL_W:] = 1.0
    return x.astype("int32"), y.astype("int32"), weights


def train_and_score(recurrent_layers, steps=120, batch=64):
    keras.utils.set_random_seed(0)
    backbone = keras_brt.models.BlockRecurrentTransformerBackbone(
        RECALL_V, 2, 32, 4, 8, 64, block_size=RECALL_W, num_state_vectors=4,
        recurrent_layers=recurrent_layers, attention_scale_init=4.0,
    )
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM(backbone)
    lm.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True)
    x, y, weights = recall_task(np.random.default_rng(0), steps * batch)
    inputs = {"token_ids": x, "start_of_sequence": np.ones(len(x), bool)}
    lm.fit(inputs, y, sample_weight=weights, batch_size=batch, verbose=0)
    x, y, _ = recall_task(np.random.default_rng(1), 256)
    logits, _ = lm.call_with_state(x)
    return float((np.argmax(np.asarray(logits)[:, -RECALL_W:], -1) == y[:, -RECALL_W:]).mean())
