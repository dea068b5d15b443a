"""Block-Recurrent Transformer models: backbone, causal LM, presets and samplers."""

from keras_brt.models.backbone import BlockRecurrentTransformerBackbone
from keras_brt.models.causal_lm import BlockRecurrentTransformerCausalLM
from keras_brt.models.losses import TokenCrossEntropy
from keras_brt.models.presets import PRESETS
from keras_brt.models.samplers import (
    GreedySampler,
    RandomSampler,
    Sampler,
    TopKSampler,
    TopPSampler,
    get_sampler,
)

__all__ = [
    "BlockRecurrentTransformerBackbone",
    "BlockRecurrentTransformerCausalLM",
    "PRESETS",
    "Sampler",
    "GreedySampler",
    "RandomSampler",
    "TopKSampler",
    "TopPSampler",
    "TokenCrossEntropy",
    "get_sampler",
]
