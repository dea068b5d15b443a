"""`keras.distribution` on JAX (`keras_brt.distribute.data_parallel`): N host devices train
exactly like one, each device keeps its rows of the lanes, and a resumed run is exact."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import jax_pass_only

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax_distribution")
    done = subprocess.run([sys.executable, "-m", "tests.jax_distribution_program", "2", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "result.json") as f:
        result = json.load(f)
    return result, done.stdout, out


def assert_same_training(a, b):
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5)
    for x, y in zip(a["weights"], b["weights"]):
        np.testing.assert_allclose(x, y, atol=2e-5)
    assert sorted(a["lanes"]) == sorted(b["lanes"])
    for name in a["lanes"]:  # row i of the state is lane i's, on any number of devices
        np.testing.assert_allclose(a["lanes"][name], b["lanes"][name], atol=2e-5, err_msg=name)


@pytest.mark.slow
@jax_pass_only
def test_two_devices_train_like_one_keep_their_rows_of_the_lanes_and_resume_exactly(two_devices):
    """Two steps on 2 devices, saved, reloaded under the distribution and trained two more
    end where 4 steps on one device end: losses, weights and every lane row."""
    result, _, _ = two_devices
    assert result["devices"] == 2
    assert_same_training(result["many"], result["one"])
    assert result["lane_spec"] == "P('batch',)"  # sharded with the batch, not gathered
    assert result["resumed_lane_spec"] == "P('batch',)"  # and again after the reload
    assert result["lane_rows_per_device"] == [2, 2]
    assert "batch" not in result["weight_spec"]  # weights replicated


@pytest.mark.slow
@jax_pass_only
def test_keras_brt_train_distribution_data_parallel(two_devices):
    _, printed, out = two_devices
    with open(out / "cli.json") as f:
        assert json.load(f)["code"] == 0
    assert "keras.distribution data parallel over 2 devices" in printed
    assert os.path.exists(out / "run" / "preset" / "model.weights.h5")


def test_data_parallel_refuses_what_it_cannot_do():
    import keras

    from keras_brt.distribute import jax_distribution
    from keras_brt.training.run_training import check_settings

    if keras.backend.backend() != "jax":
        with pytest.raises(ValueError, match="KERAS_BACKEND=jax"):
            check_settings(8, 1, 64, 1, "none", "float32", "data_parallel")
        with pytest.raises(ValueError, match="backend="):
            jax_distribution.data_parallel()
        return
    with pytest.raises(ValueError, match="--distribution='model'"):
        check_settings(8, 1, 64, 1, "none", "float32", "model")
    mesh = keras.distribution.DeviceMesh((1,), ["data"], keras.distribution.list_devices()[:1])
    with pytest.raises(ValueError, match="batch_dim_name='batch'"):
        jax_distribution.lane_layout_map(mesh)
