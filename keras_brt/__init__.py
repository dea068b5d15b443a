"""keras_brt: the Block-Recurrent Transformer (Hutchins et al., 2022) for Keras 3."""

import importlib
import os
import sys

from keras_brt.version import __version__

# The `keras-brt` command (`keras_brt.cli`) imports Keras only once a command runs, so
# that `--help` answers without importing TensorFlow and the command can hide
# TensorFlow's native start-up log first. Everywhere else the layers and models are
# imported now, which registers them for Keras's deserialization.
def _is_the_command():
    """`keras-brt ...`, or `python -m keras_brt ...` (whose argv[0] is still "-m" here)."""
    if os.path.basename(sys.argv[0] if sys.argv else "") in ("keras-brt", "keras-brt.exe"):
        return True
    argv = getattr(sys, "orig_argv", [])
    return "-m" in argv and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["keras_brt"]


if not _is_the_command():
    from keras_brt import layers, models  # noqa: F401

# Loaded on first use, so that `import keras_brt` needs no TensorFlow under the JAX backend.
_SUBMODULES = ("layers", "models", "data", "training", "export", "distribute")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"keras_brt.{name}")
    raise AttributeError(f"module 'keras_brt' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))


__all__ = ["data", "distribute", "export", "layers", "models", "training", "__version__"]
