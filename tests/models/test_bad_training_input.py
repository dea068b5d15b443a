"""Bad data never reaches the weights: out-of-vocabulary ids stop `fit`, `evaluate`,
`predict` and the `*_on_batch` methods with a ValueError before any update, and a
non-finite loss is never applied."""

import keras
import numpy as np
import pytest

from tests.conftest import jax_pass_only
from tests.models.common import V, make_lm, token_ids

B, T = 2, 8


def compiled_lm():
    lm = make_lm()
    lm.compile(optimizer=keras.optimizers.AdamW(1e-2), jit_compile=True)
    lm.build({"token_ids": (B, T)})
    return lm


def weights(lm):
    return [np.array(w) for w in lm.weights]


def assert_same(before, after):
    assert len(before) == len(after)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(b, a)


def batches_with_an_outsider(bad_id, bad_batch=1, count=3):
    ids = token_ids(B * count, T + 1, seed=3).reshape(count, B, T + 1)
    ids[bad_batch, 1, 5] = bad_id
    return ids


@pytest.mark.parametrize("bad_id", [V, 300, -1])
def test_fit_on_arrays_refuses_an_out_of_vocabulary_id_before_any_update(bad_id):
    lm = compiled_lm()
    ids = batches_with_an_outsider(bad_id).reshape(-1, T + 1)
    before = weights(lm)
    with pytest.raises(ValueError, match=rf"token_ids={bad_id}\b"):
        lm.fit(ids[:, :-1], ids[:, 1:], batch_size=B, verbose=0)
    assert_same(before, weights(lm))
    assert int(lm.optimizer.iterations.numpy()) == 0


@pytest.mark.slow
def test_fit_on_a_generator_stops_at_the_bad_batch_with_the_earlier_updates_kept():
    lm = compiled_lm()
    ids = batches_with_an_outsider(300, bad_batch=2)
    seen = []

    def batches():
        for i, batch in enumerate(ids):
            seen.append(i)
            yield batch[:, :-1], batch[:, 1:]

    with pytest.raises(ValueError, match=r"token_ids=300"):
        lm.fit(batches(), steps_per_epoch=3, verbose=0)
    assert all(np.isfinite(w).all() for w in weights(lm))
    # The batches before the bad one were trained on; the bad one was not.
    assert int(lm.optimizer.iterations.numpy()) <= 2
    assert 2 in seen


def test_evaluate_predict_and_on_batch_methods_refuse_out_of_vocabulary_ids():
    lm = compiled_lm()
    ids = token_ids(B, T + 1)
    ids[0, 3] = V + 7
    before = weights(lm)
    for call in (
        lambda: lm.evaluate(ids[:, :-1], ids[:, 1:], batch_size=B, verbose=0),
        lambda: lm.predict(ids[:, :-1], batch_size=B, verbose=0),
        lambda: lm.train_on_batch(ids[:, :-1], ids[:, 1:]),
        lambda: lm.test_on_batch(ids[:, :-1], ids[:, 1:]),
        lambda: lm.predict_on_batch({"token_ids": ids[:, :-1]}),
    ):
        with pytest.raises(ValueError, match=rf"token_ids={V + 7}\b"):
            call()
    assert_same(before, weights(lm))


def test_fit_on_a_tf_data_pipeline_refuses_an_out_of_vocabulary_id():
    tf = pytest.importorskip("tensorflow")
    lm = compiled_lm()
    ids = batches_with_an_outsider(999, bad_batch=0)
    dataset = tf.data.Dataset.from_tensor_slices(
        ({"token_ids": ids[:, :, :-1]}, ids[:, :, 1:])
    )
    before = weights(lm)
    with pytest.raises(ValueError, match=r"token_ids=999\b"):
        lm.fit(dataset, verbose=0)
    assert_same(before, weights(lm))


@pytest.mark.slow
def test_a_non_finite_loss_is_never_applied_and_fit_stops():
    """A NaN sample weight in the second batch makes that step's loss NaN: the update
    is skipped (weights, optimizer and lanes as after the first step) and fit raises."""
    ids = token_ids(B * 3, T + 1, seed=5)
    x, y = ids[:, :-1], ids[:, 1:]
    w = np.ones(y.shape, "float32")
    w[B:2 * B] = np.nan

    lm = compiled_lm()
    lm.fit(x[:B], y[:B], sample_weight=w[:B], batch_size=B, verbose=0)  # the first step
    after_first = weights(lm)  # lanes and optimizer included
    with pytest.raises(FloatingPointError, match=r"step 2 was not finite"):
        lm.fit(x[B:], y[B:], sample_weight=w[B:], batch_size=B, verbose=0)  # the same compiled step
    assert int(lm.optimizer.iterations.numpy()) == 1
    after = weights(lm)
    assert all(np.isfinite(a).all() for a in after if a.dtype.kind == "f")
    assert_same(after_first, after)


@pytest.mark.slow
def test_no_step_after_a_non_finite_one_is_applied_and_the_check_stops_fit_early():
    """The host checks every `check_every` steps, not after each: the steps between the
    bad one and the check are not applied either, and fit stops at the check."""
    from keras_brt.models.update_guard import NonFiniteUpdateStop

    ids = token_ids(B * 10, T + 1, seed=7).reshape(10, B, T + 1)
    weight = np.ones((10, B, T), "float32")
    weight[1] = np.nan  # the second step's loss
    lm = compiled_lm()
    lm.fit(ids[0, :, :-1], ids[0, :, 1:], batch_size=B, verbose=0)  # the first step
    after_first = weights(lm)
    seen = []

    def batches():
        for i in range(1, 10):
            seen.append(i)
            yield ids[i, :, :-1], ids[i, :, 1:], weight[i]

    with pytest.raises(FloatingPointError, match=r"step 2 was not finite.*nor any later step"):
        lm.fit(batches(), steps_per_epoch=9, verbose=0,
               callbacks=[NonFiniteUpdateStop(check_every=3)])
    assert int(lm.optimizer.iterations.numpy()) == 1
    assert_same(after_first, weights(lm))  # the flag is cleared once fit has stopped
    assert len(seen) < 9  # stopped at the check, before the epoch's end


@pytest.mark.slow
@jax_pass_only  # the order of the stop and the callbacks does not depend on the backend
def test_a_checkpoint_never_records_a_skipped_step(tmp_path):
    """The stop comes before any later callback, so a checkpoint due at the bad step is not written."""
    from keras_brt.training import RunCheckpoint

    ids = token_ids(B * 2, T + 1, seed=6)
    w = np.ones((B * 2, T), "float32")
    w[B:] = np.inf
    lm = compiled_lm()
    with pytest.raises(FloatingPointError):
        lm.fit(ids[:, :-1], ids[:, 1:], sample_weight=w, batch_size=B, verbose=0,
               callbacks=[RunCheckpoint(str(tmp_path), every=1)])
    import json

    with open(tmp_path / "checkpoint.json") as f:
        assert json.load(f)["step"] == 1


def test_call_with_state_takes_python_lists_and_names_empty_or_ragged_ids():
    lm = make_lm()
    ids = token_ids(B, T)
    logits, _ = lm.call_with_state(ids.tolist())
    np.testing.assert_allclose(np.asarray(logits), np.asarray(lm.call_with_state(ids)[0]), atol=1e-6)
    with pytest.raises(ValueError, match=r"token_ids.shape=\(2, 0\)"):
        lm.call_with_state(np.zeros((2, 0), "int32"))
    with pytest.raises(ValueError, match="token_ids"):
        lm.call_with_state([[1.5, 2.0]])
    with pytest.raises(ValueError, match="token_ids"):
        lm.call_with_state([])


def still_works(lm, ids):
    """After a refused batch the model trains, predicts, steps and generates as before
    (on JAX a step that raised would have left Keras's trainer without its state)."""
    lm.fit(ids[:, :-1], ids[:, 1:], batch_size=B, verbose=0)
    assert lm.predict(ids[:, :-1], batch_size=B, verbose=0).shape == (B, T, V)
    logits, _ = lm.call_with_state(ids[:, :-1])
    assert np.isfinite(np.asarray(logits)).all()
    assert lm.generate(ids[:, :3], max_length=6)["token_ids"].shape == (B, 6)


def test_fit_on_arrays_names_bad_targets_and_rows_before_the_step_and_the_model_keeps_working():
    lm = compiled_lm()
    ids = token_ids(B * 2, T + 1, seed=8)
    x, y = ids[:, :-1], ids[:, 1:]
    lm.fit(x, y, batch_size=B, verbose=0)
    before = weights(lm)
    for call, message in (
        (lambda: lm.fit(x, y[:, :-1], batch_size=B, verbose=0),
         r"`y` \(the next-token targets\) must have the shape of `token_ids`.*"
         rf"y.shape=\({2 * B}, {T - 1}\) and token_ids.shape=\({2 * B}, {T}\)"),
        (lambda: lm.fit(x, y + V, batch_size=B, verbose=0),
         r"`y` \(the next-token targets\) must lie in \[0, vocabulary_size=40\).*Received: y=\d+"),
        (lambda: lm.fit(x[:3], y[:3], batch_size=3, verbose=0),
         r"carries 2 lanes.*a batch of 3 rows \(3 rows of token_ids, batch_size=3\)"),
        (lambda: lm.fit(x[:3], y[:3], batch_size=B, verbose=0),
         r"carries 2 lanes.*a batch of 1 row \(the last of 3 rows"),
        (lambda: lm.evaluate(x, y[:, :-1], batch_size=B, verbose=0), r"must have the shape"),
        (lambda: lm.train_on_batch(x[:3], y[:3]), r"a batch of 3 rows"),
        (lambda: lm.test_on_batch(x[:B], y[:B] - V), r"Received: y=-\d+"),
    ):
        with pytest.raises(ValueError, match=message):
            call()
        assert_same(before, weights(lm))
    still_works(lm, ids[:B])


@pytest.mark.slow
def test_generators_and_tf_data_name_bad_targets_and_rows_and_the_model_keeps_working():
    lm = compiled_lm()
    ids = token_ids(B * 3, T + 1, seed=9)
    x, y = ids[:, :-1], ids[:, 1:]
    lm.fit(x[:B], y[:B], batch_size=B, verbose=0)

    def batches(rows=B, cut=0, shift=0):
        for i in range(2):
            yield x[i * rows:(i + 1) * rows], y[i * rows:(i + 1) * rows, cut:] + shift

    cases = [
        (lambda: lm.fit(batches(rows=3), steps_per_epoch=2, verbose=0), r"a batch of 3 rows"),
        (lambda: lm.fit(batches(cut=1), steps_per_epoch=2, verbose=0), r"must have the shape"),
        (lambda: lm.fit(batches(shift=V), steps_per_epoch=2, verbose=0),
         r"`y` \(the next-token targets\) must lie"),
    ]
    try:
        import tensorflow as tf
    except ImportError:
        tf = None
    if tf is not None:
        def dataset(rows=B, cut=0, shift=0):
            return tf.data.Dataset.from_tensor_slices((x, y[:, cut:] + shift)).batch(rows)

        cases += [
            (lambda: lm.fit(dataset(rows=3), verbose=0), r"carries 2 lanes.*a batch of 3 rows"),
            (lambda: lm.fit(dataset(cut=1), verbose=0),
             rf"y.shape=\({B}, {T - 1}\) and token_ids.shape=\({B}, {T}\)"),
            (lambda: lm.fit(dataset(shift=V), verbose=0), rf"Received: y={V}|Received: y=\d+"),
            (lambda: lm.evaluate(dataset(rows=3), verbose=0), r"a batch of 3 rows"),
        ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
        still_works(lm, ids[:B])
