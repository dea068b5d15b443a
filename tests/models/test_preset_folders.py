"""save_to_preset / from_preset(folder): KerasHub's preset layout, with weights and tokenizer."""

import json
import os

import keras
import numpy as np
import pytest

import keras_brt
from keras_brt.data import ByteTokenizer
from tests.models.common import W, make_lm, token_ids

Backbone = keras_brt.models.BlockRecurrentTransformerBackbone
CausalLM = keras_brt.models.BlockRecurrentTransformerCausalLM


@pytest.mark.slow
def test_a_trained_model_round_trips_through_a_preset_folder(tmp_path):
    keras.utils.set_random_seed(0)
    ids = token_ids(length=3 * W)
    lm = make_lm(feedback=True, vocabulary_size=264)  # room for the byte tokenizer
    lm.generator.tokenizer = ByteTokenizer()
    lm.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=keras.backend.backend() == "jax")
    lm.fit({"token_ids": ids, "start_of_sequence": np.ones(2, bool)}, ids, batch_size=2, verbose=0)
    expected = np.asarray(lm.call_with_state(ids)[0])
    folder = str(tmp_path / "preset")
    lm.save_to_preset(folder)
    assert sorted(os.listdir(folder)) == ["config.json", "metadata.json", "model.weights.h5",
                                          "tokenizer.json"]
    with open(os.path.join(folder, "metadata.json")) as f:
        metadata = json.load(f)
    assert metadata["parameter_count"] == lm.backbone.count_params()
    assert metadata["keras_brt_version"] == keras_brt.__version__

    keras.utils.set_random_seed(9)  # other initial weights: the file's must replace them
    loaded = CausalLM.from_preset(folder)
    np.testing.assert_array_equal(np.asarray(loaded.call_with_state(ids)[0]), expected)
    assert loaded.backbone.get_config() == lm.backbone.get_config()
    assert isinstance(loaded.tokenizer, ByteTokenizer)
    out = loaded.generate("def f", max_length=12)
    assert isinstance(out, str) and out.startswith("def f")
    backbone = Backbone.from_preset(folder)  # the causal LM's folder gives its backbone too
    hidden = np.asarray(backbone(ids)[0])
    np.testing.assert_array_equal(hidden, np.asarray(lm.backbone(ids)[0]))
    untrained = CausalLM.from_preset(folder, load_weights=False)
    assert np.abs(np.asarray(untrained.call_with_state(ids)[0]) - expected).max() > 1e-3


def test_preset_folder_errors_name_the_argument(tmp_path):
    folder = str(tmp_path / "backbone")
    make_lm().backbone.save_to_preset(folder)
    with pytest.raises(ValueError, match=r"holds a BlockRecurrentTransformerBackbone, not a "
                                         r"BlockRecurrentTransformerCausalLM"):
        CausalLM.from_preset(folder)
    with pytest.raises(ValueError, match=r"no config overrides. Received: overrides=\['num_layers'\]"):
        Backbone.from_preset(folder, num_layers=2)
    with pytest.raises(ValueError, match=r"Received: preset='.*missing'"):
        CausalLM.from_preset(str(tmp_path / "missing"))


def _truncate(path):
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[:len(content) // 2])


def _write(text):
    def damage(path):
        with open(path, "w") as f:
            f.write(text)
    return damage


# (file, how it is damaged, what the error must say)
DAMAGES = [
    ("config.json", _truncate, "config.json is not valid JSON"),
    ("config.json", _write("[1, 2]"), "config.json must hold a JSON object, and holds a list"),
    ("config.json", _write('{"class_name": "NoSuchModel", "config": {}}'),
     "config.json does not describe a keras_brt object"),
    ("metadata.json", _truncate, "metadata.json is not valid JSON"),
    ("tokenizer.json", _truncate, "tokenizer.json is not valid JSON"),
    ("tokenizer.json", _write('{"class_name": "NoSuchTokenizer", "config": {}}'),
     "tokenizer.json does not describe a keras_brt object"),
    ("model.weights.h5", _truncate, "model.weights.h5 could not be loaded"),
    ("model.weights.h5", _write("not HDF5"), "model.weights.h5 could not be loaded"),
    ("model.weights.h5", os.remove, "model.weights.h5 is missing"),
]


def damaged_preset(folder, file, damage):
    """A causal LM's preset folder (tokenizer included) with one file damaged."""
    lm = make_lm(vocabulary_size=264)
    lm.generator.tokenizer = ByteTokenizer()
    lm.save_to_preset(str(folder))
    damage(os.path.join(str(folder), file))
    return str(folder)


@pytest.mark.parametrize("file,damage,message", DAMAGES, ids=[f"{d[0]}-{d[2].split(' ', 2)[-1][:24]}"
                                                              for d in DAMAGES])
def test_a_damaged_preset_folder_is_a_value_error_naming_the_file(tmp_path, file, damage, message):
    folder = damaged_preset(tmp_path / "preset", file, damage)
    with pytest.raises(ValueError, match=message) as error:
        CausalLM.from_preset(folder)
    assert repr(os.path.join(folder, file)) in str(error.value)  # the file, as the error's Received
    assert "damaged or incomplete" in str(error.value)
    if file != "tokenizer.json":  # the backbone's folder: the same file, the same error
        with pytest.raises(ValueError, match=message):
            Backbone.from_preset(folder)


def test_weights_of_another_model_and_a_folder_without_config_are_named(tmp_path):
    folder = damaged_preset(tmp_path / "preset", "config.json", lambda path: None)
    make_lm(vocabulary_size=264, num_layers=2).backbone.save_to_preset(str(tmp_path / "smaller"))
    os.replace(tmp_path / "smaller" / "model.weights.h5", os.path.join(folder, "model.weights.h5"))
    with pytest.raises(ValueError, match=r"model.weights.h5 could not be loaded: .* another "
                                         r"model's weights"):
        CausalLM.from_preset(folder)
    os.remove(os.path.join(folder, "config.json"))
    with pytest.raises(ValueError, match=r"no config.json .*Received: preset='.*preset'"):
        CausalLM.from_preset(folder)
