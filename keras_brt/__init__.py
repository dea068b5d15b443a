"""keras_brt: the Block-Recurrent Transformer (Hutchins et al., 2022) for Keras 3."""

from keras_brt import layers, models
from keras_brt.version import __version__

__all__ = ["layers", "models", "__version__"]
