"""Presets with weights, in KerasHub's folder layout.

A preset folder holds `config.json` (the model's Keras config), `model.weights.h5`
(the backbone's weights: never the carried lanes, which belong to a training run),
`metadata.json` (versions, parameter count, date) and, when the model has a
tokenizer, `tokenizer.json` (its Keras config; a SentencePiece model travels inside
it). `save_to_preset` writes one; `from_preset(folder)` loads it.
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
    with open(os.path.join(preset_dir, CONFIG_FILE)) as f:
        config = json.load(f)
    tokenizer_path = os.path.join(preset_dir, TOKENIZER_FILE)
    if os.path.isfile(tokenizer_path):
        importlib.import_module("keras_brt.data.tokenizers")  # registers them (imports TensorFlow)
    model = keras.saving.deserialize_keras_object(config)
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
        backbone.build()
        backbone.load_weights(os.path.join(preset_dir, WEIGHTS_FILE))
    if os.path.isfile(tokenizer_path) and getattr(model, "tokenizer", False) is None:
        with open(tokenizer_path) as f:
            model.generator.tokenizer = keras.saving.deserialize_keras_object(json.load(f))
    return model
