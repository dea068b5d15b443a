"""Tiny model configurations and helpers shared by the model and training tests."""

import numpy as np

import keras_brt
from keras_brt.training import StepLosses  # noqa: F401  (the tests' per-step loss recorder)

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
