"""Test configuration: backend banner, seeds, and the `slow` marker.

The suite runs on the backend named by KERAS_BACKEND (CI runs it on tensorflow
and on jax). Tests marked `slow` train small models (or compile further configurations of a
check the quick pass already makes once); they run by default (CI runs them) and
`-m "not slow"` skips them for a quick local pass.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Many tests compile the same tiny models: on JAX, its persistent compilation cache (shared by
# the xdist workers and the processes tests start, which inherit these variables) compiles
# each distinct step once per run and keeps it for the next run. Its keys hash the
# computation, so a change of code never reuses a stale entry.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache",
    "jax_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import keras  # noqa: E402
import pytest  # noqa: E402


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: trains a model, or compiles a further configuration of one (seconds to a minute)")


# For heavy tests whose subject does not depend on the Keras backend (or that
# already cover both backends themselves): CI runs them once, in the TensorFlow pass.
tensorflow_pass_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="backend-independent; runs once, in the TensorFlow pass",
)


# Likewise for heavy tests whose subject does not depend on the backend and that run
# faster on JAX (training loops): CI runs them once, in the JAX pass.
jax_pass_only = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="backend-independent; runs once, in the JAX pass",
)


@pytest.fixture(autouse=True)
def _seed_and_policy():
    keras.utils.set_random_seed(1234)
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)
