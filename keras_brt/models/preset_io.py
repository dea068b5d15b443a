"""Presets with weights, in KerasHub's folder layout.

A preset folder holds `config.json` (the model's Keras config), `model.weights.h5`
(the backbone's weights: never the carried lanes, which belong to a training run),
`metadata.json` (versions, parameter count, date) and, when the model has a
tokenizer, `tokenizer.json` (its Keras config; a SentencePiece model travels inside
it). `save_to_preset` writes one; `from_preset(folder)` loads it. A damaged file
(cut short, not JSON, not a model's weights) is a `ValueError` naming the file and
what is wrong with it.
"""

import datetime
import importlib
import json
import os

import keras

from keras_brt.version import __version__

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
TOKENIZER_FILE = "tokenizer.json"


HANDLE_LOADERS = {"hf://": "huggingface_hub", "kaggle://": "kagglehub"}


def local_preset(preset):
    """A local folder for `preset`: the preset itself, or the downloaded copy of a
    handle, as KerasHub reads them: `hf://OWNER/REPO` (Hugging Face Hub, through
    `huggingface_hub.snapshot_download`) or `kaggle://OWNER/MODEL/keras/VARIATION[/VERSION]`
    (Kaggle Models, through `kagglehub.model_download`). Neither package is a
    dependency: install the one a handle needs. Anything else is returned unchanged."""
    if not isinstance(preset, str):
        return preset
    for scheme, package in HANDLE_LOADERS.items():
        if preset.startswith(scheme):
            try:
                loader = importlib.import_module(package)
            except ImportError:
                raise ValueError(
                    f"A {scheme} handle is downloaded with `{package}`, which is not installed "
                    f"(pip install {package.replace('_', '-')}). Received: preset={preset!r}"
                ) from None
            name = preset[len(scheme):]
            if scheme == "hf://":
                return loader.snapshot_download(repo_id=name)
            return loader.model_download(name)
    return preset


def is_preset_folder(preset):
    """True when `preset` is a folder holding a saved preset's `config.json`."""
    return isinstance(preset, (str, os.PathLike)) and os.path.isfile(
        os.path.join(preset, CONFIG_FILE)
    )


def _write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def save_to_preset(model, backbone, preset_dir, tokenizer=None):
    """Writes `model` (a backbone or a causal LM whose backbone is `backbone`) to
    `preset_dir`, created if needed."""
    backbone.build()
    os.makedirs(preset_dir, exist_ok=True)
    _write_json(os.path.join(preset_dir, CONFIG_FILE), keras.saving.serialize_keras_object(model))
    backbone.save_weights(os.path.join(preset_dir, WEIGHTS_FILE))
    if tokenizer is not None:
        _write_json(os.path.join(preset_dir, TOKENIZER_FILE),
                    keras.saving.serialize_keras_object(tokenizer))
    _write_json(os.path.join(preset_dir, METADATA_FILE), {
        "keras_brt_version": __version__,
        "keras_version": keras.__version__,
        "parameter_count": int(backbone.count_params()),
        "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "class_name": type(model).__name__,
    })


def _damaged(path, what):
    return ValueError(
        f"The preset folder's {os.path.basename(path)} {what}: the folder is damaged or incomplete "
        f"(save the model again with save_to_preset, or copy the folder again). Received: {path!r}"
    )


def _first_line(error):
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {line[:200] + '...' if len(line) > 200 else line}"


def read_preset_json(preset_dir, name):
    """The JSON object in the file `name` of `preset_dir`; a `ValueError` naming the
    file when it cannot be read, is not JSON (a file cut short) or holds no object."""
    path = os.path.join(preset_dir, name)
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as error:
        raise _damaged(path, f"is not valid JSON ({error.msg}: line {error.lineno}, column "
                             f"{error.colno} of {os.path.getsize(path)} bytes)") from None
    except UnicodeDecodeError:
        raise _damaged(path, "is not UTF-8 text") from None
    except OSError as error:
        raise _damaged(path, f"cannot be read ({_first_line(error)})") from None
    if not isinstance(value, dict):
        raise _damaged(path, f"must hold a JSON object, and holds a {type(value).__name__}")
    return value


def _deserialize(path, config):
    try:
        return keras.saving.deserialize_keras_object(config)
    except Exception as error:  # Keras raises TypeError, ValueError, KeyError... for a bad config
        raise _damaged(path, f"does not describe a keras_brt object ({_first_line(error)})") from None


def load_preset(cls, preset_dir, load_weights=True, overrides=None):
    """The model saved in `preset_dir`, an instance of `cls` (a causal LM folder also
    gives its backbone to `BlockRecurrentTransformerBackbone.from_preset`). A saved
    model's config is what it was trained with: `overrides` must be empty."""
    if overrides:
        raise ValueError(
            "A saved preset folder takes no config overrides. "
            f"Received: overrides={sorted(overrides)}"
        )
    if not is_preset_folder(preset_dir):
        raise ValueError(
            f"`preset` must be a preset name or a folder with {CONFIG_FILE}. "
            f"Received: preset={preset_dir!r}"
        )
    config_path = os.path.join(preset_dir, CONFIG_FILE)
    config = read_preset_json(preset_dir, CONFIG_FILE)
    if os.path.exists(os.path.join(preset_dir, METADATA_FILE)):
        read_preset_json(preset_dir, METADATA_FILE)  # only checked: nothing in it is needed
    tokenizer_path = os.path.join(preset_dir, TOKENIZER_FILE)
    tokenizer_config = None
    if os.path.exists(tokenizer_path):
        tokenizer_config = read_preset_json(preset_dir, TOKENIZER_FILE)
        importlib.import_module("keras_brt.data.tokenizers")  # registers them (imports TensorFlow)
    model = _deserialize(config_path, config)
    backbone = getattr(model, "backbone", model)
    if not isinstance(model, cls):
        if isinstance(backbone, cls):
            model = backbone
        else:
            raise ValueError(
                f"The preset in {preset_dir!r} holds a {type(model).__name__}, not a "
                f"{cls.__name__}. Received: preset={preset_dir!r}"
            )
    if load_weights:
        weights_path = os.path.join(preset_dir, WEIGHTS_FILE)
        if not os.path.isfile(weights_path):
            raise _damaged(weights_path, "is missing (load_weights=False loads the architecture "
                                         "alone)")
        backbone.build()
        try:
            backbone.load_weights(weights_path)
        except Exception as error:  # h5py's OSError for a damaged file, Keras's ValueError for others
            raise _damaged(weights_path, f"could not be loaded: it is cut short, damaged or holds "
                                         f"another model's weights ({_first_line(error)}; "
                                         f"{os.path.getsize(weights_path)} bytes)") from None
    if tokenizer_config is not None and getattr(model, "tokenizer", False) is None:
        model.generator.tokenizer = _deserialize(tokenizer_path, tokenizer_config)
    return model
