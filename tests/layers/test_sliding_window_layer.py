"""SlidingWindowTransformerLayer: the paper's window, all blocks at once."""

import numpy as np
import pytest

from keras_brt.layers import SlidingWindowTransformerLayer
from tests import reference
from tests.harness import run_layer_test

CONFIG = dict(hidden_dim=16, num_heads=2, head_dim=4, block_size=4, intermediate_dim=32)


def _inputs(batch=2, length=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, length, 16)).astype("float32")
    keys = reference.l2(rng.normal(size=(batch, 4, 2, 4))).astype("float32")
    values = rng.normal(size=(batch, 4, 2, 4)).astype("float32")
    return x, keys, values


def test_layer_harness():
    run_layer_test(
        SlidingWindowTransformerLayer,
        {**CONFIG, "dropout": 0.1},
        _inputs(),
        expected_output_shape=((2, 12, 16), (2, 4, 2, 4), (2, 4, 2, 4)),
        expected_num_trainable_weights=8,
        expected_num_seed_generators=3,
    )


def test_matches_token_by_token_reference():
    x, keys, values = _inputs()
    layer = SlidingWindowTransformerLayer(**CONFIG)
    y, new_keys, new_values = layer(x, keys, values)
    for row in range(2):
        ref_y, ref_k, ref_v = reference.sliding_layer(layer, x[row], keys[row], values[row])
        np.testing.assert_allclose(np.asarray(y)[row], ref_y, atol=2e-4)
        np.testing.assert_allclose(np.asarray(new_keys)[row], ref_k, atol=1e-5)
        np.testing.assert_allclose(np.asarray(new_values)[row], ref_v, atol=1e-5)


def test_chunked_calls_equal_one_call():
    x, keys, values = _inputs(length=16)
    layer = SlidingWindowTransformerLayer(**CONFIG)
    whole, k_whole, v_whole = layer(x, keys, values)
    first, k, v = layer(x[:, :4], keys, values)
    second, k, v = layer(x[:, 4:], k, v)
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, atol=1e-5)
    np.testing.assert_allclose(k, k_whole, atol=1e-6)
    np.testing.assert_allclose(v, v_whole, atol=1e-6)


def test_output_at_t_ignores_later_tokens_and_older_than_window():
    x, keys, values = _inputs(batch=1, length=16)
    layer = SlidingWindowTransformerLayer(**CONFIG)
    base = np.asarray(layer(x, keys, values)[0])
    changed = x.copy()
    changed[0, 6] += 1.0
    out = np.asarray(layer(changed, keys, values)[0])
    np.testing.assert_array_equal(out[0, :6], base[0, :6])  # causal
    assert np.abs(out[0, 6:11] - base[0, 6:11]).max() > 1e-4  # itself + next W tokens
    np.testing.assert_array_equal(out[0, 11:], base[0, 11:])  # beyond the window


def test_dropout_only_in_training():
    x, keys, values = _inputs()
    plain = SlidingWindowTransformerLayer(**CONFIG)
    dropped = SlidingWindowTransformerLayer(**CONFIG, dropout=0.5)
    dropped.build(x.shape)
    plain.build(x.shape)
    dropped.set_weights(plain.get_weights())
    np.testing.assert_allclose(dropped(x, keys, values)[0], plain(x, keys, values)[0], atol=1e-6)
    assert np.abs(np.asarray(dropped(x, keys, values, training=True)[0]) - plain(x, keys, values)[0]).max() > 1e-3


def test_bad_arguments():
    with pytest.raises(ValueError, match="block_size"):
        SlidingWindowTransformerLayer(16, 2, 4, block_size=0)
    with pytest.raises(ValueError, match=r"hidden_dim=10, num_heads=4"):
        SlidingWindowTransformerLayer(10, 4, None, block_size=4)
    with pytest.raises(ValueError, match="dropout"):
        SlidingWindowTransformerLayer(16, 2, 4, block_size=4, dropout=1.5)
    layer = SlidingWindowTransformerLayer(**CONFIG)
    x, keys, values = _inputs(length=10)
    with pytest.raises(ValueError, match="multiple of block_size=4"):
        layer(x, keys, values)
