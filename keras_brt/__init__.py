"""keras_brt: the Block-Recurrent Transformer (Hutchins et al., 2022) for Keras 3."""

import importlib

from keras_brt import layers, models
from keras_brt.version import __version__

# Loaded on first use, so that `import keras_brt` needs no TensorFlow under the JAX backend.
_SUBMODULES = ("data", "training", "export", "distribute")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"keras_brt.{name}")
    raise AttributeError(f"module 'keras_brt' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))


__all__ = ["data", "distribute", "export", "layers", "models", "training", "__version__"]
