"""Every bad input gets a ValueError that names the argument and the value received."""

import numpy as np
import pytest

import keras_brt
from tests.models.common import TINY, V, W, make_lm, token_ids

Backbone = keras_brt.models.BlockRecurrentTransformerBackbone


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"hidden_dim": 15, "head_dim": None}, r"hidden_dim=15, num_heads=2"),
        ({"num_layers": 0}, r"num_layers=0"),
        ({"vocabulary_size": -3}, r"vocabulary_size=-3"),
        ({"block_size": 0}, r"block_size=0"),
        ({"num_state_vectors": 2.5}, r"num_state_vectors=2.5"),
        ({"head_dim": 0}, r"head_dim=0"),
        ({"dropout": 1.0}, r"dropout=1.0"),
        ({"recurrent_layers": (3,)}, r"recurrent_layers=\(3,\)"),
        ({"recurrent_layers": (-4,)}, r"recurrent_layers=\(-4,\)"),
        ({"recurrent_layers": (1, -2)}, r"same layer twice"),
        ({"recurrent_layers": 1}, r"recurrent_layers=1"),
        ({"recurrent_layers": (0, 2), "feedback": True}, r"feedback=True.*recurrent_layers=\(0, 2\)"),
        ({"recurrent_layers": (), "feedback": True}, r"feedback=True.*recurrent_layers=\(\)"),
        ({"gate": "gru"}, r"gate='gru'"),
        ({"state_mlp": "triple"}, r"state_mlp='triple'"),
        ({"state_attention_scale_init": "big"}, r"state_attention_scale_init='big'"),
        ({"state_attention_scale_init": 0}, r"state_attention_scale_init=0"),
        ({"gate_bias_init": None}, r"gate_bias_init=None"),
    ],
)
def test_impossible_configurations(overrides, match):
    with pytest.raises(ValueError, match=match):
        Backbone(**{**TINY, **overrides})


def test_unknown_preset_and_override():
    with pytest.raises(ValueError, match="preset='rec_huge'"):
        Backbone.from_preset("rec_huge")
    with pytest.raises(ValueError, match="num_layer"):
        Backbone.from_preset("tiny_slide", num_layer=3)


def test_bad_token_ids():
    lm = make_lm()
    with pytest.raises(ValueError, match="token_ids.dtype=float32"):
        lm.call_with_state(token_ids().astype("float32"))
    with pytest.raises(ValueError, match=r"token_ids=\[40\]"):
        ids = token_ids()
        ids[1, 3] = V
        lm.call_with_state(ids)
    with pytest.raises(ValueError, match=r"token_ids=\[-1\]"):
        ids = token_ids()
        ids[0, 0] = -1
        lm.call_with_state(ids)
    with pytest.raises(ValueError, match=r"token_ids.shape=\(8,\)"):
        lm.call_with_state(token_ids()[0, :8])


def test_out_of_vocabulary_rows_are_nan_inside_compiled_functions():
    """Inside jit no error can be raised: the offending row turns NaN, the others stay exact."""
    import keras

    lm = make_lm()
    ids = token_ids()
    expected, _ = lm.call_with_state(ids)
    ids[1, 5] = V + 3
    if keras.backend.backend() == "jax":
        import jax

        logits = jax.jit(lambda t: lm.call_with_state(t)[0])(ids)
    else:
        import tensorflow as tf

        logits = tf.function(lambda t: lm.call_with_state(t)[0], jit_compile=True)(ids)
    logits = np.asarray(logits)
    assert np.isnan(logits[1]).all()
    np.testing.assert_allclose(logits[0], np.asarray(expected)[0], atol=1e-5)


def test_bad_state():
    lm = make_lm()
    ids = token_ids(batch=2, length=2 * W)
    state = {k: np.asarray(v) for k, v in lm.initial_state(2).items()}
    missing = dict(state)
    missing.pop("layer_1_state")
    with pytest.raises(ValueError, match=r"Received: state keys=\["):
        lm.call_with_state(ids, missing)
    with pytest.raises(ValueError, match="Received: state keys=list"):
        lm.call_with_state(ids, list(state.values()))
    wrong = dict(state, layer_0_keys=np.zeros((2, W + 1, 2, 8), "float32"))
    with pytest.raises(ValueError, match=r"state\['layer_0_keys'\].shape=\(2, 5, 2, 8\)"):
        lm.call_with_state(ids, wrong)
    other_batch = {k: np.asarray(v) for k, v in lm.initial_state(3).items()}
    with pytest.raises(ValueError, match=r"state\['layer_0_keys'\].shape=\(3, 4, 2, 8\)"):
        lm.call_with_state(ids, other_batch)


def test_bad_start_of_sequence_and_padding_mask():
    lm = make_lm()
    ids = token_ids(batch=2, length=2 * W)
    with pytest.raises(ValueError, match=r"start_of_sequence.shape=\(3,\)"):
        lm.call_with_state(ids, start_of_sequence=np.array([True, False, True]))
    with pytest.raises(ValueError, match=r"start_of_sequence.shape=\(2, 1\)"):
        lm.call_with_state(ids, start_of_sequence=np.array([[True], [False]]))
    with pytest.raises(ValueError, match=r"padding_mask.shape=\(2, 7\)"):
        lm.call_with_state(ids, padding_mask=np.ones((2, 7), bool))


def test_bad_dict_inputs_and_backbone():
    lm = make_lm()
    with pytest.raises(ValueError, match="Received keys"):
        lm.call({"tokens": token_ids()})
    with pytest.raises(ValueError, match="backbone"):
        keras_brt.models.BlockRecurrentTransformerCausalLM("rec_fixed_skip")
