"""RelativePositionBias, gates, FeedForward and the attention helpers."""

import numpy as np
import pytest
from keras import ops

from keras_brt.layers import FeedForward, FixedGate, LSTMGate, RelativePositionBias
from keras_brt.layers.attention import attend, l2_normalize, window_mask
from tests import reference
from tests.harness import run_layer_test


def test_relative_position_bias_layer_harness():
    run_layer_test(
        RelativePositionBias,
        {"num_heads": 3, "num_buckets": 8, "max_distance": 20},
        (np.arange(4, 8, dtype="int32"), np.arange(0, 8, dtype="int32")),
        expected_output_shape=(3, 4, 8),
        expected_num_trainable_weights=1,
        float32_outputs=True,
        run_training_check=True,
    )


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20)])
def test_relative_position_buckets_match_t5_formula(num_buckets, max_distance):
    layer = RelativePositionBias(2, num_buckets=num_buckets, max_distance=max_distance)
    distances = np.arange(-3, 400)
    got = np.asarray(layer.bucket(ops.convert_to_tensor(distances)))
    expected = [reference.t5_bucket(d, num_buckets, max_distance) for d in distances]
    np.testing.assert_array_equal(got, expected)
    assert got.max() == num_buckets - 1 and np.all(np.diff(got) >= 0)


def test_relative_position_bias_reads_the_table_by_distance():
    layer = RelativePositionBias(2)
    bias = np.asarray(layer(ops.arange(8, 16), ops.arange(0, 16)))  # (2, 8, 16)
    table = layer.embeddings.numpy()
    for i in range(8):
        for j in range(16):
            np.testing.assert_allclose(bias[:, i, j], table[:, reference.t5_bucket(8 + i - j)])


def test_relative_position_bias_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_heads"):
        RelativePositionBias(0)
    with pytest.raises(ValueError, match="max_distance"):
        RelativePositionBias(2, num_buckets=32, max_distance=10)


@pytest.mark.parametrize("gate_cls,num_weights", [(FixedGate, 1), (LSTMGate, 4)])
def test_gate_harness_and_formula(gate_cls, num_weights):
    rng = np.random.default_rng(0)
    old, update = rng.normal(size=(2, 5, 6)).astype("float32"), rng.normal(size=(2, 5, 6)).astype("float32")
    gate_input = rng.normal(size=(2, 5, 7)).astype("float32")
    layer = run_layer_test(
        gate_cls,
        {},
        (old, update, gate_input),
        expected_output_shape=(2, 5, 6),
        expected_num_trainable_weights=num_weights,
    )
    expected = reference.gate(layer, old, update, gate_input)
    np.testing.assert_allclose(np.asarray(layer(old, update, gate_input)), expected, atol=1e-5)


def test_gates_start_near_half_and_biased_to_remember():
    """The paper's initialisation: fixed g ~ 0.5; LSTM forget ~ 0.73, input ~ 0.27."""
    old = np.ones((1, 64, 32), "float32")
    fixed = FixedGate()
    fixed.build(old.shape)
    g = reference.sigmoid(fixed.bias.numpy())
    assert abs(g.mean() - 0.5) < 0.05 and g.std() < 0.05
    lstm = LSTMGate()
    zeros_update = np.zeros_like(old)
    small_input = np.random.default_rng(0).normal(size=(1, 64, 32)).astype("float32")
    kept = np.asarray(lstm(old, zeros_update, small_input))  # = forget gate
    assert abs(kept.mean() - reference.sigmoid(1.0)) < 0.05
    taken = np.asarray(lstm(zeros_update, old, small_input))  # = input gate
    assert abs(taken.mean() - reference.sigmoid(-1.0)) < 0.05


def test_feed_forward_harness_and_formula():
    x = np.random.default_rng(1).normal(size=(2, 3, 8)).astype("float32")
    layer = run_layer_test(
        FeedForward,
        {"hidden_dim": 8, "intermediate_dim": 16, "dropout": 0.1},
        (x,),
        expected_output_shape=(2, 3, 8),
        expected_num_trainable_weights=3,
        expected_num_seed_generators=1,
    )
    np.testing.assert_allclose(np.asarray(layer(x)), reference.feed_forward(layer, x), atol=1e-5)


def test_window_mask_keeps_exactly_the_previous_w_tokens():
    w = 5
    mask = window_mask(w)
    assert mask.shape == (w, 2 * w)
    for i in range(w):
        visible = np.flatnonzero(mask[i]) - w  # key positions relative to the block
        np.testing.assert_array_equal(visible, np.arange(i - w, i))  # never itself


def test_attend_ignores_masked_keys_and_normalises():
    rng = np.random.default_rng(0)
    q = l2_normalize(ops.convert_to_tensor(rng.normal(size=(1, 2, 1, 4)).astype("float32")))
    k = l2_normalize(ops.convert_to_tensor(rng.normal(size=(1, 3, 1, 4)).astype("float32")))
    v = rng.normal(size=(1, 3, 1, 4)).astype("float32")
    mask = np.array([[True, False, False], [True, True, False]])
    out = np.asarray(attend(q, k, v, np.ones((1,), "float32"), mask=mask))
    np.testing.assert_allclose(out[0, 0, 0], v[0, 0, 0], atol=1e-6)  # only key 0 visible
    v2 = v.copy()
    v2[0, 2] = 100.0  # a masked key's value never leaks
    np.testing.assert_array_equal(out, np.asarray(attend(q, k, v2, np.ones((1,), "float32"), mask=mask)))
    assert np.allclose(np.linalg.norm(np.asarray(q), axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("queries", [6, 1])
def test_fused_attention_equals_the_reference_path(queries, monkeypatch):
    """`attend` folds scale, bias and mask into keras.ops.dot_product_attention; after
    keras.config.disable_flash_attention() (and for one query per row) it writes them out."""
    import keras

    rng = np.random.default_rng(1)
    w, h, k = 6, 2, 4
    q = l2_normalize(ops.convert_to_tensor(rng.normal(size=(3, queries, h, k)).astype("float32")))
    keys = l2_normalize(ops.convert_to_tensor(rng.normal(size=(3, 2 * w, h, k)).astype("float32")))
    values = rng.normal(size=(3, 2 * w, h, k)).astype("float32")
    scale = np.array([3.0, -7.0], "float32")  # |scale| is used
    bias = rng.normal(size=(h, queries, 2 * w)).astype("float32")
    mask = window_mask(w)[-queries:]
    calls = []
    fused_op = ops.dot_product_attention
    monkeypatch.setattr(ops, "dot_product_attention", lambda *a, **kw: calls.append(1) or fused_op(*a, **kw))
    for kwargs in ({"bias": bias, "mask": mask}, {"mask": mask}, {}):
        fused = np.asarray(attend(q, keys, values, scale, **kwargs))
        keras.config.disable_flash_attention()
        try:
            reference_out = np.asarray(attend(q, keys, values, scale, **kwargs))
        finally:
            keras.config.enable_flash_attention()
        np.testing.assert_allclose(fused, reference_out, atol=2e-5)
    assert len(calls) == (3 if queries > 1 else 0)


@pytest.mark.parametrize("ranges", [(8, 8, 0, 16), (5, 3, 2, 9), (10, 1, 3, 5), (0, 4, 0, 4)])
def test_contiguous_bias_equals_the_gathered_bias_and_its_gradient(ranges):
    """The tiled Toeplitz layout (no scatter-add in its gradient) computes the same bias
    and the same gradient for the bucket table as the (Q, S) gather."""
    import keras

    layer = RelativePositionBias(3, num_buckets=8, max_distance=20)
    layer.build()
    rng = np.random.default_rng(0)
    layer.embeddings.assign(rng.normal(size=(3, 8)).astype("float32"))
    q0, q, k0, k = ranges
    weights = rng.normal(size=(3, q, k)).astype("float32")
    fast = lambda: layer.contiguous(q0, q, k0, k)
    gathered = lambda: layer(ops.arange(q0, q0 + q), ops.arange(k0, k0 + k))
    np.testing.assert_array_equal(np.asarray(fast()), np.asarray(gathered()))

    def table_gradient(bias_fn):
        if keras.backend.backend() == "jax":
            import jax

            def loss(table):
                with keras.StatelessScope(state_mapping=[(layer.embeddings, table)]):
                    return (bias_fn() * weights).sum()
            return np.asarray(jax.grad(loss)(layer.embeddings.value))
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(bias_fn() * weights)
        return tape.gradient(loss, layer.embeddings.value).numpy()

    np.testing.assert_allclose(table_gradient(fast), table_gradient(gathered), rtol=1e-5, atol=1e-5)
