"""What the `keras.distribution` test runs in a fresh process: JAX on 2 (or N) host CPU
devices, which XLA fixes at start.

    python -m tests.jax_distribution_program N OUT   # writes OUT/result.json, OUT/cli.json
"""

import json
import os
import sys

DEVICES = int(sys.argv[1])
os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_brt  # noqa: E402
from tests.models.common import StepLosses, W, make_lm, token_ids  # noqa: E402

SEGMENTS, LANES = 4, 4


def segments():
    """Four segments of four lanes; lane 2 starts a new document at segment 2."""
    ids = np.concatenate([token_ids(batch=LANES, length=2 * W + 1, seed=s) for s in range(SEGMENTS)])
    starts = np.array([s == 0 or (lane == 2 and s == 2)
                       for s in range(SEGMENTS) for lane in range(LANES)])
    return {"token_ids": ids[:, :-1], "start_of_sequence": starts}, ids[:, 1:]


def train(steps, start=None):
    """A fresh model (or `start`, a .keras file) trained on `steps` segments from step 0
    (or where `start` stopped); returns the model and each step's loss."""
    if start is None:
        keras.utils.set_random_seed(0)
        lm = make_lm()
        lm.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
        first = 0
    else:
        lm = keras.saving.load_model(start)
        first = int(lm.optimizer.iterations.numpy())
    x, y = segments()
    rows = slice(first * LANES, steps * LANES)
    record = StepLosses()
    lm.fit({k: v[rows] for k, v in x.items()}, y[rows], batch_size=LANES, callbacks=[record],
           verbose=0)
    return lm, record.losses


def summary(lm, losses):
    return {
        "losses": losses,
        "weights": [np.asarray(w).tolist() for w in lm.trainable_weights],
        "lanes": {k: np.asarray(v).tolist() for k, v in sorted(lm.lane_state().items())},
    }


def main(out):
    result = {"devices": len(keras.distribution.list_devices())}
    result["one"] = summary(*train(SEGMENTS))
    spread = keras_brt.distribute.data_parallel()
    with spread.scope():
        # Two steps, saved, reloaded under the distribution, two more: the same training
        # as one device's four steps in one go.
        half, losses_a = train(2)
        lane = next(iter(half.lane_state().values()))
        result["lane_spec"] = str(lane.sharding.spec)
        result["lane_rows_per_device"] = sorted(
            int(shard.data.shape[0]) for shard in lane.addressable_shards)
        result["weight_spec"] = str(half.trainable_weights[0].value.sharding.spec)
        path = os.path.join(out, "half.keras")
        half.save(path)
        resumed, losses_b = train(SEGMENTS, start=path)
        result["many"] = summary(resumed, losses_a + losses_b)
        resumed_lane = next(iter(resumed.lane_state().values()))
        result["resumed_lane_spec"] = str(resumed_lane.sharding.spec)
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)
    # The command line: a short run on the default corpus, lanes split over the devices.
    from keras_brt import cli

    code = cli.main(["train", "--distribution", "data_parallel", "--steps", "2", "--batch-size",
                     "2", "--segment-length", "64", "--no-evaluation", "--seed", "1",
                     "--output", os.path.join(out, "run")])
    with open(os.path.join(out, "cli.json"), "w") as f:
        json.dump({"code": code}, f)


if __name__ == "__main__":
    main(sys.argv[2])
