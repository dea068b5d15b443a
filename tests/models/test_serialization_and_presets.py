"""Configs, saving, precision, presets, and the same logits on TensorFlow and JAX."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_brt
from tests.conftest import tensorflow_pass_only
from tests.models.common import TINY, W, make_lm, token_ids

Backbone = keras_brt.models.BlockRecurrentTransformerBackbone
CausalLM = keras_brt.models.BlockRecurrentTransformerCausalLM
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("gate,state_mlp", [("fixed", "skip"), ("lstm", "dual")])
def test_config_round_trip_through_json(gate, state_mlp):
    lm = make_lm(gate=gate, state_mlp=state_mlp, recurrent_layers=(0, -1))
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(lm)))
    revived = keras.saving.deserialize_keras_object(config)
    assert type(revived) is CausalLM
    assert revived.get_config() == lm.get_config()
    assert revived.backbone.get_config() == lm.backbone.get_config()
    assert revived.backbone.recurrent_layer_indices == (0, 2)


@pytest.mark.parametrize("config", [{"gate": "lstm", "state_mlp": "single"}, {"feedback": True}])
def test_keras_file_round_trip_gives_identical_outputs(tmp_path, config):
    lm = make_lm(**config)
    ids = token_ids(length=3 * W)
    lm.build({"token_ids": ids.shape})
    path = str(tmp_path / "lm.keras")
    lm.save(path)
    loaded = keras.saving.load_model(path)
    a, sa = lm.call_with_state(ids)
    b, sb = loaded.call_with_state(ids)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for name in sa:
        np.testing.assert_array_equal(np.asarray(sa[name]), np.asarray(sb[name]))


@tensorflow_pass_only  # a fresh process; the backend does not matter
def test_compiled_model_loads_with_its_metrics_in_a_fresh_process(tmp_path):
    """The default metric and BitsPerToken are keras_brt objects: loading a compiled .keras
    file must find them even when only `keras_brt` (not keras_brt.training) is imported."""
    lm = make_lm()
    lm.compile()
    lm.build({"token_ids": (2, 2 * W)})
    path = str(tmp_path / "lm.keras")
    lm.save(path)
    script = textwrap.dedent(
        f"""
        import keras, keras_brt
        lm = keras.saving.load_model(r"{path}")
        names = [m["registered_name"] for m in lm.get_compile_config()["weighted_metrics"]]
        assert names == ["keras_brt>TokenAccuracy"], names
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-c", script], env=env, check=True, cwd=ROOT)


@pytest.mark.slow
def test_mixed_bfloat16_keeps_float32_variables_and_logits():
    ids = token_ids(length=3 * W)
    full = make_lm()
    full.build({"token_ids": ids.shape})
    mixed = CausalLM(Backbone(**TINY, dtype="mixed_bfloat16"))
    mixed.build({"token_ids": ids.shape})
    mixed.set_weights(full.get_weights())
    assert all(v.dtype in ("float32", "int32") for v in mixed.weights)
    logits, state = mixed.call_with_state(ids)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert keras.backend.standardize_dtype(state["layer_1_state"].dtype) == "bfloat16"
    reference, _ = full.call_with_state(ids)
    error = np.abs(np.asarray(logits) - np.asarray(reference)).max()
    assert error < 0.1 * np.abs(np.asarray(reference)).max(), error
    mixed.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    x = {"token_ids": ids, "start_of_sequence": np.array([True, True])}
    loss = mixed.fit(x, ids, batch_size=2, verbose=0).history["loss"][0]
    assert np.isfinite(loss)


def test_tiny_presets_build_and_run():
    for name in ("tiny_rec_fixed_skip", "tiny_rec_lstm_skip", "tiny_slide", "tiny_xl"):
        lm = CausalLM.from_preset(name, num_layers=2, hidden_dim=32, head_dim=8, intermediate_dim=64,
                                  block_size=8, num_state_vectors=4,
                                  recurrent_layers=() if "rec" not in name else (-1,))
        logits, _ = lm.call_with_state(token_ids(length=16) % 264)
        assert logits.shape == (2, 16, 264)
    assert set(Backbone.presets) >= {
        "rec_fixed_skip", "rec_lstm_skip", "slide_12", "slide_13", "xl_512", "xl_1024", "xl_2048"
    }


def test_paper_presets_match_the_paper_configuration():
    rec = keras_brt.models.PRESETS["rec_fixed_skip"]["config"]
    assert (rec["num_layers"], rec["hidden_dim"], rec["num_heads"], rec["head_dim"]) == (12, 1024, 8, 128)
    assert (rec["intermediate_dim"], rec["block_size"], rec["num_state_vectors"]) == (4096, 512, 512)
    assert rec["vocabulary_size"] == 32128 and rec["gate"] == "fixed" and rec["state_mlp"] == "skip"
    backbone = Backbone.from_preset("rec_fixed_skip")
    assert backbone.recurrent_layer_indices == (9,)  # the 10th of 12 layers
    assert Backbone.from_preset("xl_2048").block_size == 2048
    assert Backbone.from_preset("slide_13").num_layers == 13
    assert Backbone.from_preset("rec_lstm_skip").gate == "lstm"


@pytest.mark.slow
@tensorflow_pass_only
def test_paper_sizes_have_the_paper_parameter_counts():
    """meliad's medium_150M: 12 x 12.58M non-embedding parameters; recurrence adds ~9M."""

    def non_embedding(name):
        backbone = Backbone.from_preset(name)
        backbone.build()
        return backbone.count_params() - 32128 * 1024

    slide = non_embedding("slide_12")
    rec = non_embedding("rec_fixed_skip")
    assert abs(slide - 12 * 12.58e6) < 0.01 * slide, slide
    assert 8.5e6 < rec - slide < 9.9e6, rec - slide


@tensorflow_pass_only  # it runs the other backend itself
def test_same_logits_on_tensorflow_and_jax_from_one_weights_file(tmp_path):
    this = keras.backend.backend()
    other = "jax" if this == "tensorflow" else "tensorflow"
    lm = make_lm()
    ids = token_ids(length=3 * W)
    logits, _ = lm.call_with_state(ids)
    lm.save_weights(str(tmp_path / "lm.weights.h5"))
    np.save(tmp_path / "ids.npy", ids)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from tests.models.common import make_lm
        lm = make_lm()
        lm.build({{"token_ids": (None, {3 * W})}})  # no lanes: the saved model had none
        lm.load_weights(r"{tmp_path / 'lm.weights.h5'}")
        logits, _ = lm.call_with_state(np.load(r"{tmp_path / 'ids.npy'}"))
        np.save(r"{tmp_path / 'other.npy'}", np.asarray(logits))
        """
    )
    env = dict(os.environ, KERAS_BACKEND=other, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-c", script], env=env, check=True, cwd=ROOT)
    np.testing.assert_allclose(np.load(tmp_path / "other.npy"), np.asarray(logits), atol=1e-4)


def test_modeling_code_imports_without_tensorflow():
    # The distribution package's replica helpers are imported by the model: no TensorFlow
    # either. Touching a strategy name or `keras_brt.export` then loads the TF submodule.
    script = (
        "import sys, keras_brt, keras_brt.layers, keras_brt.models, keras_brt.distribute;"
        "from keras_brt.distribute import replicas;"
        "tf = lambda: [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_text')];"
        "assert not tf(), tf();"
        "assert callable(keras_brt.distribute.get_strategy) and tf();"
        "assert callable(keras_brt.export.export_saved_model)"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-c", script], env=env, check=True, cwd=ROOT)
