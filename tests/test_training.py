"""Optimizers, the bits-per-token metric, held-out evaluation, and a real short training run."""

import math

import keras
import numpy as np
import pytest

import keras_brt
from keras_brt import data, training
from tests.conftest import jax_pass_only
from tests.models.common import W, make_lm, token_ids


def test_inverse_square_root_schedule_is_the_papers():
    schedule = training.InverseSquareRootDecay(warmup_steps=1000)
    values = [float(schedule(step - 1)) for step in (1, 500, 1000, 4000, 500_000)]
    expected = [1 / 1000 / math.sqrt(1000), 0.5 / math.sqrt(1000), 1 / math.sqrt(1000),
                1 / math.sqrt(4000), 1 / math.sqrt(500_000)]
    np.testing.assert_allclose(values, expected, rtol=1e-5)
    assert keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule)).get_config() \
        == schedule.get_config()


def test_make_optimizer_recipes_and_errors():
    adafactor = training.make_optimizer("adafactor", steps=100)
    assert isinstance(adafactor, keras.optimizers.Adafactor)
    assert adafactor.global_clipnorm == 1.0
    # The paper's 1000 warm-up steps, or a tenth of a shorter run (300 steps never left a
    # 1000-step warm-up: keras-brt train --optimizer adafactor with its defaults).
    def schedule(**kwargs):
        return training.make_optimizer("adafactor", **kwargs).get_config()["learning_rate"]

    assert "InverseSquareRootDecay" in schedule(steps=100)["class_name"]
    for steps, warmup in ((100, 10), (300, 30), (500_000, 1000)):
        assert schedule(steps=steps)["config"]["warmup_steps"] == warmup, steps
    assert schedule(steps=300, warmup_steps=250)["config"]["warmup_steps"] == 250
    adamw = training.make_optimizer("adamw", steps=100, learning_rate=3e-3)
    assert isinstance(adamw, keras.optimizers.AdamW)
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        training.make_optimizer("sgd")
    with pytest.raises(ValueError, match="warmup_steps=0"):
        training.InverseSquareRootDecay(0)


def test_grouped_adamw_multiplies_the_learning_rate_of_matching_variables_only():
    grad = np.array([0.3, -2.0, 1e-3], "float32")
    updates = {}
    for optimizer in (keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.0),
                      training.GroupedAdamW({r"(^|/)state_": 7.0}, learning_rate=0.01, weight_decay=0.0)):
        variables = [keras.Variable(np.ones(3, "float32"), name=name)
                     for name in ("state_gate", "token_gate")]
        for _ in range(3):
            optimizer.apply([keras.ops.convert_to_tensor(grad)] * 2, variables)
        updates[type(optimizer).__name__] = [1.0 - np.asarray(v) for v in variables]
    adamw, grouped = updates["AdamW"], updates["GroupedAdamW"]
    assert np.all(np.abs(adamw[0]) > 0.005)
    np.testing.assert_allclose(grouped[0], 7.0 * adamw[0], rtol=1e-4)  # state_gate: 7x the step
    np.testing.assert_allclose(grouped[1], adamw[1], rtol=1e-6)  # token_gate: AdamW's step


def test_state_path_pattern_selects_the_recurrent_state_path():
    lm = make_lm()
    lm(token_ids())
    optimizer = training.make_optimizer("adamw", steps=10, state_learning_rate_multiplier=4.0)
    assert isinstance(optimizer, training.GroupedAdamW)
    fast = {v.path for v in lm.trainable_variables if optimizer.multiplier(v.path) == 4.0}
    slow = {v.path for v in lm.trainable_variables} - fast
    for part in ("initial_state", "state_gate/", "state_ids", "state_qkv_dense/", "state_norm/",
                 "token_cross_scale"):
        assert any(part in path for path in fast), (part, sorted(fast))
    assert not any("state" in path.rsplit("/", 1)[-1] for path in slow), sorted(slow)
    assert any("embedding" in path for path in slow)
    assert len(fast) >= 6


def test_grouped_adamw_config_round_trip_and_errors():
    optimizer = training.GroupedAdamW({training.optimizers.STATE_PATH: 3.0}, learning_rate=2e-3,
                                      weight_decay=0.05)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, training.GroupedAdamW)
    assert restored.learning_rate_multipliers == {training.optimizers.STATE_PATH: 3.0}
    assert restored.get_config() == optimizer.get_config()
    with pytest.raises(ValueError, match="invalid pattern.*'state_\\('"):
        training.GroupedAdamW({"state_(": 2.0})
    with pytest.raises(ValueError, match="positive numbers.*-1"):
        training.GroupedAdamW({"state_": -1})
    with pytest.raises(ValueError, match="state_learning_rate_multiplier=0"):
        training.make_optimizer("adamw", state_learning_rate_multiplier=0)
    with pytest.raises(ValueError, match="adafactor"):
        training.make_optimizer("adafactor", state_learning_rate_multiplier=2.0)


def test_bits_per_token_is_weighted_cross_entropy_in_bits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype("float32")
    y = rng.integers(0, 7, (2, 5))
    w = (rng.random((2, 5)) > 0.3).astype("float32")
    metric = training.BitsPerToken()
    metric.update_state(y, logits, sample_weight=w)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nats = -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(metric.result()), (nats * w).sum() / w.sum() / math.log(2), rtol=1e-5)


def test_bits_per_token_gives_nan_for_a_target_outside_the_vocabulary():
    logits = np.zeros((1, 3, 7), "float32")
    metric = training.BitsPerToken()
    metric.update_state(np.array([[1, 7, 2]]), logits)  # Keras's one-hot would make 7 a zero loss
    assert np.isnan(float(metric.result()))


def test_token_cross_entropy_gradient_is_softmax_minus_one_hot():
    """The target's logit is picked by a select, not a gather: its gradient must still be
    softmax(logits) - one_hot(target), per token."""
    from keras_brt.models.losses import token_cross_entropy

    rng = np.random.default_rng(3)
    logits = (2 * rng.normal(size=(2, 4, 9))).astype("float32")
    targets = rng.integers(0, 9, (2, 4)).astype("int32")
    weights = rng.random((2, 4)).astype("float32")
    if keras.backend.backend() == "jax":
        import jax

        grad = np.asarray(jax.grad(lambda x: (token_cross_entropy(targets, x) * weights).sum())(logits))
    else:
        import tensorflow as tf

        x = tf.constant(logits)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(token_cross_entropy(targets, x) * weights)
        grad = tape.gradient(loss, x).numpy()
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = (softmax - np.eye(9)[targets]) * weights[..., None]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_token_accuracy_equals_keras_accuracy_and_counts_ties_and_bad_targets():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 6, 11)).astype("float32")
    y = rng.integers(0, 11, (3, 6))
    y[0, :3] = np.argmax(logits[0, :3], -1)  # some right answers
    w = (rng.random((3, 6)) > 0.3).astype("float32")
    ours, theirs = training.TokenAccuracy(), keras.metrics.SparseCategoricalAccuracy()
    ours.update_state(y, logits, sample_weight=w)
    theirs.update_state(y, logits, sample_weight=w)
    assert float(theirs.result()) > 0
    np.testing.assert_allclose(float(ours.result()), float(theirs.result()), rtol=1e-6)
    tied = np.zeros((1, 3, 5), "float32")
    tied[0, :, 2:4] = 1.0  # ids 2 and 3 share the largest logit
    metric = training.TokenAccuracy()
    metric.update_state(np.array([[3, 1, 5]]), tied)  # the tie counts; 1 is wrong; 5 is not an id
    np.testing.assert_allclose(float(metric.result()), 1 / 3, rtol=1e-6)
    restored = keras.metrics.deserialize(keras.metrics.serialize(ours))
    assert isinstance(restored, training.TokenAccuracy) and restored.name == "accuracy"
    lm = make_lm()
    lm.compile()
    assert lm.get_compile_config()["weighted_metrics"][0]["registered_name"] == "keras_brt>TokenAccuracy"


def test_evaluation_with_the_state_cleared_resets_only_the_recurrent_state():
    lm = make_lm()
    ids = token_ids(length=4 * W)
    x = {"token_ids": ids, "start_of_sequence": np.array([False, False]),
         "padding_mask": np.ones_like(ids, bool)}
    y, weights = np.roll(ids, -1, axis=1), np.ones(ids.shape, "float32")
    _, used = lm.call_with_state(token_ids(length=2 * W, seed=9))
    step = training.make_eval_step(lm)
    nats, _ = step(x, y, weights, used, np.array(True))
    reset = dict(used, layer_1_state=lm.initial_state(2)["layer_1_state"])
    logits, _ = lm.call_with_state(ids, reset)
    expected = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    np.testing.assert_allclose(np.asarray(nats), np.asarray(expected), atol=1e-4)
    carried, _ = step(x, y, weights, used, np.array(False))
    assert np.abs(np.asarray(carried) - np.asarray(nats)).max() > 1e-4


@pytest.mark.slow
@jax_pass_only  # the data pipeline and the learning do not depend on the backend; JAX trains faster
def test_short_training_on_the_default_corpus_lowers_held_out_bits():
    keras.utils.set_random_seed(0)
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM.from_preset("tiny_rec_fixed_skip")
    lm.compile(optimizer=training.make_optimizer("adamw", steps=40, learning_rate=3e-3),
               weighted_metrics=[training.BitsPerToken()], jit_compile=True)
    tokenizer = data.ByteTokenizer()
    train = data.lane_dataset(data.stdlib_source("train"), tokenizer, 4, 128, repeat=True,
                              shuffle_buffer=64, seed=0)
    step = training.make_eval_step(lm)

    def held_out():
        batches = data.lane_dataset(data.stdlib_source("test"), tokenizer, 4, 128).as_numpy_iterator()
        return training.evaluate_bits_per_token(lm, batches, max_batches=8, step=step)["bits_per_token"]

    before = held_out()
    lm.fit(train, steps_per_epoch=40, epochs=1, verbose=0)
    after = held_out()
    print(f"\nheld-out bits per token on the stdlib corpus: {before:.3f} before, {after:.3f} after 40 steps")
    assert before > 7.0  # about log2(264) = 8.04 untrained
    assert after < before - 2.0


@pytest.mark.slow
def test_an_eval_step_made_before_training_sees_the_trained_weights():
    lm = make_lm()
    ids = token_ids(length=2 * W)
    x = {"token_ids": ids, "start_of_sequence": np.array([True, True]),
         "padding_mask": np.ones_like(ids, bool)}
    weights = np.ones(ids.shape, "float32")
    step = training.make_eval_step(lm)  # before the model is even built
    state = lm.initial_state(2)
    before, _ = step(x, ids, weights, state, np.array(False))
    lm.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=True)
    lm.fit(x, ids, batch_size=2, epochs=3, verbose=0)
    after, _ = step(x, ids, weights, state, np.array(False))
    logits, _ = lm.call_with_state(ids, state, x["start_of_sequence"])
    expected = keras.losses.sparse_categorical_crossentropy(ids, logits, from_logits=True)
    np.testing.assert_allclose(np.asarray(after), np.asarray(expected), atol=1e-4)
    assert np.asarray(after).mean() < np.asarray(before).mean() - 0.1


@pytest.mark.slow
@jax_pass_only  # bf16 training on TensorFlow: test_train_under_a_strategy_in_mixed_bfloat16 (CLI)
def test_mixed_bfloat16_training_tracks_float32():
    """Same data, same initial weights: the bf16 run's per-step losses follow the float32 run's."""
    from tests.models.common import TINY, StepLosses

    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 40, 6 * W)
    ids = np.stack([np.roll(pattern, r) for r in range(8)]).astype("int32")  # learnable repeats
    steps = 12  # the same batch 12 times, in one epoch (an epoch per step costs more than the step)
    x = {"token_ids": np.tile(ids, (steps, 1)), "start_of_sequence": np.ones(8 * steps, bool)}

    histories, weights = {}, None
    for policy in ("float32", "mixed_bfloat16"):
        backbone = keras_brt.models.BlockRecurrentTransformerBackbone(**TINY, dtype=policy)
        lm = keras_brt.models.BlockRecurrentTransformerCausalLM(backbone)
        lm.build({"token_ids": (8, 6 * W)})
        if weights is None:
            weights = lm.get_weights()
        lm.set_weights(weights)
        logits, _ = lm.call_with_state(ids)
        assert keras.backend.standardize_dtype(logits.dtype) == "float32"  # float32 island
        lm.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True)
        record = StepLosses()
        lm.fit(x, x["token_ids"], batch_size=8, epochs=1, verbose=0, callbacks=[record])
        histories[policy] = np.array(record.losses)
        assert all(v.dtype in ("float32", "int32") for v in lm.weights)
    full, mixed = histories["float32"], histories["mixed_bfloat16"]
    print(f"\nfloat32 loss {full[0]:.3f} -> {full[-1]:.3f}; mixed_bfloat16 {mixed[0]:.3f} -> {mixed[-1]:.3f}")
    assert full[-1] < 0.85 * full[0]  # it learned something
    np.testing.assert_allclose(mixed, full, rtol=0.05)
