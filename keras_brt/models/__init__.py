"""Block-Recurrent Transformer models: backbone, causal LM and presets."""

from keras_brt.models.backbone import BlockRecurrentTransformerBackbone
from keras_brt.models.causal_lm import BlockRecurrentTransformerCausalLM
from keras_brt.models.presets import PRESETS

__all__ = [
    "BlockRecurrentTransformerBackbone",
    "BlockRecurrentTransformerCausalLM",
    "PRESETS",
]
