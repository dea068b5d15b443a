"""`fit` keeps dispatching training steps back to back: nothing waits for the device
between steps.

A read of any variable or step result between steps makes the host wait for that
step; on JAX it also makes Keras copy the whole training state back into the model
and rebuild it for the next step (`jax_state_sync`). One such read per step, in a
callback that guarded against non-finite steps, made `fit` 1.1-1.6x slower on a GPU
without changing any step (issue 33). These tests count the waits, so they do not
depend on the machine's speed: the count must not grow with the number of steps.
"""

import keras
import numpy as np
import pytest

from keras_brt.models.update_guard import NonFiniteUpdateStop
from tests.models.common import make_lm, token_ids

B, T = 2, 8


@pytest.fixture
def lm():
    model = make_lm()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=True)
    ids = token_ids(B * 2, T + 1)
    model.fit(ids[:, :-1], ids[:, 1:], batch_size=B, verbose=0)  # compiles
    return model


def data(steps):
    ids = token_ids(B * steps, T + 1, seed=steps)
    return ids[:, :-1], ids[:, 1:]


class Waits:
    """Counts the host's waits for the device: reads of a Keras variable (both
    backends) and, on JAX, the trainer's state syncs and reads of any array's value."""

    def __init__(self, monkeypatch, model):
        self.count = 0
        numpy = keras.Variable.numpy

        def counted_numpy(variable):
            self.count += 1
            return numpy(variable)

        monkeypatch.setattr(keras.Variable, "numpy", counted_numpy)
        if keras.backend.backend() == "jax":
            import jax.numpy as jnp

            array_type = type(jnp.zeros(()))
            value = array_type._value

            def counted_value(array):
                self.count += 1
                return value.fget(array)

            monkeypatch.setattr(array_type, "_value", property(counted_value))
            sync = type(model).jax_state_sync

            def counted_sync(trainer):
                if getattr(trainer, "_jax_state", None) and not trainer._jax_state_synced:
                    self.count += 1
                return sync(trainer)

            monkeypatch.setattr(model, "jax_state_sync", lambda: counted_sync(model))

    def during(self, fn):
        before = self.count
        fn()
        return self.count - before


def test_fit_does_not_wait_for_the_device_between_steps(lm, monkeypatch):
    waits = Waits(monkeypatch, lm)
    few = waits.during(lambda: lm.fit(*data(3), batch_size=B, verbose=0))
    many = waits.during(lambda: lm.fit(*data(9), batch_size=B, verbose=0))
    assert many == few, (few, many)
    # The instrument sees a wait per step when there is one: a guard that checks
    # after every step waits at every step.
    every = lambda n: waits.during(lambda: lm.fit(  # noqa: E731
        *data(n), batch_size=B, verbose=0, callbacks=[NonFiniteUpdateStop(check_every=1)]))
    assert every(9) >= every(3) + 6


@pytest.mark.slow
def test_the_run_callbacks_wait_only_when_they_write(lm, monkeypatch, tmp_path):
    """keras-brt train's history, progress and checkpoint callbacks read the model only
    at the steps where they write (every 4th step here, as often in 4 steps as in 8),
    not at every step."""
    from keras_brt.training import RunCheckpoint, StepHistory
    from keras_brt.training.run_training import ProgressLog

    def callbacks():
        return [StepHistory(str(tmp_path / "history.csv"), 4), ProgressLog(4, 100),
                RunCheckpoint(str(tmp_path), 1000)]

    waits = Waits(monkeypatch, lm)
    few = waits.during(lambda: lm.fit(*data(4), batch_size=B, verbose=0, callbacks=callbacks()))
    many = waits.during(lambda: lm.fit(*data(8), batch_size=B, verbose=0, callbacks=callbacks()))
    assert many == few, (few, many)


def test_non_finite_update_stop_refuses_a_bad_interval():
    with pytest.raises(ValueError, match=r"check_every=0"):
        NonFiniteUpdateStop(check_every=0)
    with pytest.raises(ValueError, match=r"check_every=2.5"):
        NonFiniteUpdateStop(check_every=2.5)
