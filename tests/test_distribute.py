"""tf.distribute: strategies by name, lanes under 2 replicas, XLA per replica, multi-worker."""

import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import tensorflow_pass_only

pytestmark = tensorflow_pass_only  # tf.distribute exists on the TensorFlow backend only
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _program(*args, env=None):
    result = subprocess.run(
        [sys.executable, "-m", "tests.distribute_programs", *args], cwd=ROOT, capture_output=True,
        text=True, env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})), timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]), result.stderr


def test_strategies_by_name_and_bad_requests():
    import tensorflow as tf

    from keras_brt import distribute

    assert isinstance(distribute.get_strategy("one_device"), tf.distribute.OneDeviceStrategy)
    assert isinstance(distribute.get_strategy("auto"), tf.distribute.OneDeviceStrategy)  # 1 CPU, no GPU
    assert isinstance(distribute.get_strategy("mirrored"), tf.distribute.MirroredStrategy)
    with pytest.raises(ValueError, match="name='parameter_server'"):
        distribute.get_strategy("parameter_server")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.get_strategy("multi_worker")
    with pytest.raises(ValueError, match=r"global_batch_size=5"):
        distribute.per_replica_batch_size(5, _FakeStrategy(2))
    assert distribute.per_replica_batch_size(8, _FakeStrategy(2)) == 4
    with distribute.strategy_scope(None):
        pass


class _FakeStrategy:
    def __init__(self, replicas):
        self.num_replicas_in_sync = replicas


def test_an_unreachable_tpu_is_a_clear_error_not_a_hang():
    import time

    from keras_brt import distribute

    start = time.time()
    with pytest.raises(ValueError, match=r"Could not reach a TPU at grpc://127.0.0.1:1 .*tpu='grpc://127.0.0.1:1'"):
        distribute.get_strategy("tpu", tpu="grpc://127.0.0.1:1", tpu_timeout=10)
    with pytest.raises(ValueError, match=r"Could not (find|reach) a TPU.*tpu=None"):
        distribute.get_strategy("tpu")  # no TPU on this machine
    assert time.time() - start < 60


@pytest.mark.slow
def test_two_replicas_train_exactly_like_one_device_with_and_without_xla():
    result, stderr = _program("mirrored", env={"TF_CPP_MIN_LOG_LEVEL": "0"})  # keep the XLA log line
    assert result["replicas"] == 2
    reference = result["losses"]["one_device"]
    assert len(reference) == 4 and reference[-1] < reference[0]
    for name in ("mirrored_jit_False", "mirrored_jit_True"):
        np.testing.assert_allclose(result["losses"][name], reference, rtol=1e-5, err_msg=name)
        assert result["lane_difference"][name] < 1e-5, name
    # XLA really compiled each replica's forward and backward pass under MirroredStrategy.
    assert result["xla_must_compile"] is True
    assert result["keras_jit_compile"] is False and result["compile_config_jit"] is True
    # A NaN loss under two replicas, with and without XLA: the step is not applied anywhere
    # (weights, optimizer and lanes equal those after the clean first step) and fit stops.
    for name, case in result["non_finite"].items():
        assert case["error"] and "step 2 was not finite" in case["error"], (name, case)
        assert case["steps"] == [1, 1] and case["finite"] and case["difference"] == 0.0, (name, case)
    # An id outside the vocabulary in a dataset distributed by distribute_lanes(vocabulary_size=):
    # fit stops with the ValueError an undistributed dataset gets, before any weight changes.
    oov = result["out_of_vocabulary"]
    assert oov["error"] and re.search(r"`token_ids` must lie in \[0, vocabulary_size=\d+\).*"
                                      r"Received: token_ids=\d+", oov["error"]), oov
    assert oov["difference"] == 0.0, oov
    compiled = stderr.find("Compiled cluster using XLA")
    assert 0 <= compiled < stderr.find("MARK end of the mirrored XLA run"), "XLA did not compile"


@pytest.mark.slow
def test_two_local_workers_train_and_end_with_identical_weights(tmp_path):
    from keras_brt import distribute

    results = distribute.launch_local_workers(
        2, [sys.executable, "-m", "tests.distribute_programs", "worker", str(tmp_path)],
        env={"PYTHONPATH": ROOT}, timeout=600,
    )
    for index, result in enumerate(results):
        assert result.returncode == 0, f"worker {index}: {result.stderr[-3000:]}"
    reports = [json.loads(next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))[7:])
               for r in results]
    assert reports[0]["replicas"] == reports[1]["replicas"] == 2
    assert reports[0]["losses"] == reports[1]["losses"] and len(reports[0]["losses"]) == 4
    a, b = np.load(tmp_path / "worker0.npz"), np.load(tmp_path / "worker1.npz")
    assert len(a.files) > 10
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name])
