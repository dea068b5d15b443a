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
