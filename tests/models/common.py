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
