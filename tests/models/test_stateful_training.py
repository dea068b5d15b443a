"""Stateful fit: lanes carried from batch to batch, resets, separate inference lanes, resume."""

import keras
import numpy as np
import pytest

from tests.models.common import W, make_lm, numpy_state, token_ids


def _segment(ids, sos):
    return {"token_ids": ids, "start_of_sequence": np.asarray(sos, bool)}


def _frozen_fit(lm, segments):
    """One fit() over consecutive segments (one batch each), zero learning rate."""
    lm.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=True)
    x = {
        key: np.concatenate([segment[key] for segment in segments])
        for key in ("token_ids", "start_of_sequence")
    }
    lm.fit(x, x["token_ids"], batch_size=2, epochs=1, verbose=0)


@pytest.mark.slow
def test_fit_carries_each_lane_and_resets_rows_at_start_of_sequence():
    lm = make_lm()
    seg = [token_ids(length=2 * W, seed=s) for s in range(3)]
    _frozen_fit(lm, [_segment(seg[0], [True, True]), _segment(seg[1], [False, False]),
                     _segment(seg[2], [True, False])])
    # The same stream computed functionally.
    _, state = lm.call_with_state(seg[0])
    _, state = lm.call_with_state(seg[1], state)
    _, expected = lm.call_with_state(seg[2], state, start_of_sequence=np.array([True, False]))
    for name, value in numpy_state(expected).items():
        np.testing.assert_allclose(np.asarray(lm.lane_state("train")[name]), value, atol=1e-5)


@pytest.mark.slow
def test_first_batch_starts_from_the_initial_state_and_reset_state_restarts_lanes():
    lm = make_lm()
    seg = [token_ids(length=2 * W, seed=s) for s in range(2)]
    _frozen_fit(lm, [_segment(seg[0], [False, False])])  # no flag: still a fresh lane
    _, fresh = lm.call_with_state(seg[0])
    for name, value in numpy_state(fresh).items():
        np.testing.assert_allclose(np.asarray(lm.lane_state()[name]), value, atol=1e-5)
    lm.reset_state()
    lm.fit(_segment(seg[1], [False, False]), seg[1], batch_size=2, verbose=0)
    _, fresh = lm.call_with_state(seg[1])
    for name, value in numpy_state(fresh).items():
        np.testing.assert_allclose(np.asarray(lm.lane_state()[name]), value, atol=1e-5)


def _gradients(lm, ids, state):
    """d loss / d weights of `call_with_state(ids, state)`, `state` a constant input."""
    from keras_brt.models.losses import TokenCrossEntropy

    variables = lm.trainable_variables
    values = [keras.ops.convert_to_tensor(v.value) for v in variables]

    def loss(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            logits, _ = lm.call_with_state(ids, state, training=True)
            return TokenCrossEntropy()(ids, logits)

    if keras.backend.backend() == "jax":
        import jax

        return [np.asarray(g) for g in jax.jit(jax.grad(loss))(values)]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(values)
        value = loss(values)
    return [np.zeros(v.shape, "float32") if g is None else np.asarray(g)  # initial_state: unused
            for v, g in zip(values, tape.gradient(value, values))]


@pytest.mark.slow
def test_no_gradient_crosses_batches():
    """fit's second step moves the weights by the gradient of that batch's loss alone, with the
    carried state a constant input: nothing flows back into the first batch's computation."""
    seg = [token_ids(length=2 * W, seed=s) for s in range(2)]
    lr = 0.5
    lm = make_lm()
    # Compiled where compiling is cheap (JAX); TF's eager step is quicker than its XLA compile.
    lm.compile(optimizer=keras.optimizers.SGD(lr), jit_compile=keras.backend.backend() == "jax")
    lm.fit(_segment(seg[0], [True, True]), seg[0], batch_size=2, verbose=0)
    carried = numpy_state(lm.lane_state())
    before = [np.asarray(v) for v in lm.trainable_variables]
    expected = _gradients(lm, seg[1], carried)
    fresh = _gradients(lm, seg[1], None)
    # The carried state matters to this batch's gradient (else the check below proves nothing).
    assert max(float(np.abs(a - b).max()) for a, b in zip(expected, fresh)) > 1e-4
    lm.fit(_segment(seg[1], [False, False]), seg[1], batch_size=2, verbose=0)
    for old, new, gradient in zip(before, lm.trainable_variables, expected):
        np.testing.assert_allclose((old - np.asarray(new)) / lr, gradient, atol=2e-5, rtol=1e-3)


@pytest.mark.slow
def test_evaluate_and_predict_use_fresh_inference_lanes():
    lm = make_lm()
    seg = [token_ids(length=2 * W, seed=s) for s in range(2)]
    _frozen_fit(lm, [_segment(seg[0], [True, True])])
    train_lanes = numpy_state(lm.lane_state("train"))
    lm.evaluate(_segment(seg[1], [False, False]), seg[1], batch_size=2, verbose=0)
    for name, value in train_lanes.items():
        np.testing.assert_array_equal(np.asarray(lm.lane_state("train")[name]), value)
    # evaluate started from fresh lanes although the segment had no start flag.
    _, fresh = lm.call_with_state(seg[1])
    for name, value in numpy_state(fresh).items():
        np.testing.assert_allclose(np.asarray(lm.lane_state("eval")[name]), value, atol=1e-5)
    predicted = lm.predict(_segment(seg[1], [False, False]), batch_size=2, verbose=0)
    np.testing.assert_allclose(predicted, np.asarray(lm.call_with_state(seg[1])[0]), atol=1e-4)


@pytest.mark.slow
def test_stateful_call_with_another_batch_size_is_refused():
    lm = make_lm()
    lm.compile(optimizer=keras.optimizers.SGD(0.0))
    seg = token_ids(length=2 * W)
    lm.fit(_segment(seg, [True, True]), seg, batch_size=2, verbose=0)
    with pytest.raises(ValueError, match="carries 2 lanes"):
        lm(token_ids(batch=3, length=2 * W))


@pytest.mark.slow
def test_saved_model_resumes_training_exactly(tmp_path):
    """A .keras file holds weights, optimizer and lanes: the resumed run continues exactly."""
    keras.utils.set_random_seed(3)
    lm = make_lm()
    lm.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
    seg = [token_ids(length=2 * W, seed=s) for s in range(4)]
    for s, sos in zip(seg[:2], ([True, True], [False, False])):
        lm.fit(_segment(s, sos), s, batch_size=2, verbose=0)
    path = str(tmp_path / "lm.keras")
    lm.save(path)
    resumed = keras.saving.load_model(path)
    for name, value in numpy_state(lm.lane_state()).items():
        np.testing.assert_array_equal(np.asarray(resumed.lane_state()[name]), value)
    losses = {}
    for key, model in (("original", lm), ("resumed", resumed)):
        losses[key] = [
            model.fit(_segment(s, [False, False]), s, batch_size=2, verbose=0).history["loss"][0]
            for s in seg[2:]
        ]
    np.testing.assert_allclose(losses["resumed"], losses["original"], rtol=1e-5)
    a, _ = lm.call_with_state(seg[0])
    b, _ = resumed.call_with_state(seg[0])
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_weights_file_round_trip_includes_lanes(tmp_path):
    lm = make_lm()
    seg = token_ids(length=2 * W)
    _frozen_fit(lm, [_segment(seg, [True, True])])
    path = str(tmp_path / "lm.weights.h5")
    lm.save_weights(path)
    other = make_lm()
    other.build({"token_ids": (2, 2 * W)})
    other.load_weights(path)
    for name, value in numpy_state(lm.lane_state()).items():
        np.testing.assert_array_equal(np.asarray(other.lane_state()[name]), value)


@pytest.mark.slow
def test_fit_never_shuffles_lanes():
    lm = make_lm()
    lm.compile(optimizer=keras.optimizers.SGD(0.0))
    seg = token_ids(length=2 * W)
    with pytest.raises(ValueError, match="shuffle=True"):
        lm.fit(_segment(seg, [True, True]), seg, batch_size=2, shuffle=True, verbose=0)
    # Rows 0-1 are segment 0 of lanes 0-1, rows 2-3 segment 1: order is kept by default.
    both = token_ids(batch=4, length=2 * W, seed=5)
    lm.fit(_segment(both, [True, True, False, False]), both, batch_size=2, verbose=0)
    _, state = lm.call_with_state(both[:2])
    _, expected = lm.call_with_state(both[2:], state)
    for name, value in numpy_state(expected).items():
        np.testing.assert_allclose(np.asarray(lm.lane_state()[name]), value, atol=1e-5)
