"""Programs the distribution tests run in fresh processes (TF's devices are fixed at start).

    python -m tests.distribute_programs mirrored   # 2 logical CPUs: one device vs 2 replicas
    python -m tests.distribute_programs worker OUT # one MultiWorkerMirroredStrategy worker
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")

import tensorflow as tf  # noqa: E402

if sys.argv[1] == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_brt import data, distribute  # noqa: E402
from tests.models.common import StepLosses, W, make_lm, token_ids  # noqa: E402

SEGMENTS, LANES = 4, 4


def segments():
    ids = np.concatenate([token_ids(batch=LANES, length=2 * W, seed=s) for s in range(SEGMENTS)])
    starts = np.array([s == 0 or (lane == 2 and s == 2) for s in range(SEGMENTS) for lane in range(LANES)])
    x = {"token_ids": ids, "start_of_sequence": starts}
    return tf.data.Dataset.from_tensor_slices((x, ids)).batch(LANES, drop_remainder=True)


def train(strategy, jit_compile):
    keras.utils.set_random_seed(0)
    with distribute.strategy_scope(strategy):
        lm = make_lm()
        lm.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=jit_compile)
    record = StepLosses()
    lm.fit(segments(), epochs=1, verbose=0, callbacks=[record])
    lanes = {k: np.asarray(v) for k, v in lm.lane_state().items()}
    return lm, record.losses, lanes


def weighted_segments(poisoned_batch=None):
    """`segments()` with sample weights; those of `poisoned_batch` are NaN."""
    ids = np.concatenate([token_ids(batch=LANES, length=2 * W, seed=s) for s in range(SEGMENTS)])
    weights = np.ones(ids.shape, "float32")
    if poisoned_batch is not None:
        weights[poisoned_batch * LANES:(poisoned_batch + 1) * LANES] = np.nan
    x = {"token_ids": ids, "start_of_sequence": np.arange(len(ids)) < LANES}
    return tf.data.Dataset.from_tensor_slices((x, ids, weights)).batch(LANES, drop_remainder=True)


def non_finite(strategy, jit_compile):
    """One clean step, then a step whose loss is NaN: that step must not be applied."""
    state = []
    for poisoned in (False, True):
        keras.utils.set_random_seed(0)
        with distribute.strategy_scope(strategy):
            lm = make_lm()
            lm.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
        error = None
        try:
            lm.fit(weighted_segments(1 if poisoned else None).take(2 if poisoned else 1), verbose=0)
        except FloatingPointError as caught:
            error = str(caught)
        values = [np.asarray(v) for v in lm.backbone.weights + lm.optimizer.variables]
        values += [np.asarray(v) for v in lm.lane_state().values()]
        state.append((values, int(lm.optimizer.iterations.numpy()), error))
    (clean, clean_steps, _), (after, steps, error) = state
    return {"error": error, "steps": [clean_steps, steps],
            "difference": max(float(np.abs(a - b).max()) for a, b in zip(clean, after)),
            "finite": all(bool(np.isfinite(a).all()) for a in after if a.dtype.kind == "f")}


def out_of_vocabulary(strategy):
    """An id outside the vocabulary in a dataset distributed before fit (distribute_lanes with
    the vocabulary): a ValueError naming token_ids, and no weight changed."""
    keras.utils.set_random_seed(0)
    with distribute.strategy_scope(strategy):
        lm = make_lm()
        lm.build({"token_ids": (LANES, 2 * W)})
        lm.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
    before = [np.asarray(v) for v in lm.backbone.weights]
    vocabulary = lm.backbone.vocabulary_size

    def make_dataset(batch, context):
        ids = np.concatenate([token_ids(batch=LANES, length=2 * W, seed=s) for s in range(2)])
        ids[1, 3] = vocabulary + 5  # in the first global batch
        shard = ids.reshape(2, LANES, -1)[:, context.input_pipeline_id::context.num_input_pipelines]
        shard = shard.reshape(-1, ids.shape[1])
        return tf.data.Dataset.from_tensor_slices((shard, shard)).batch(batch, drop_remainder=True)

    dataset = distribute.distribute_lanes(strategy, make_dataset, LANES, vocabulary_size=vocabulary)
    error = None
    try:
        lm.fit(dataset, verbose=0)
    except ValueError as caught:
        error = str(caught)
    difference = max(float(np.abs(a - np.asarray(b)).max()) for a, b in zip(before, lm.backbone.weights))
    return {"error": error, "steps": int(lm.optimizer.iterations.numpy()), "difference": difference}


def mirrored():
    results = {}
    mirrored_strategy = distribute.get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    # The XLA case first, so that TF's one-time "Compiled cluster using XLA" log line can only
    # come from the per-replica step function.
    for jit in (True, False):
        lm, losses, lanes = train(mirrored_strategy, jit)
        results[f"mirrored_jit_{jit}"] = {"losses": losses, "lanes": lanes}
        if jit:
            function = lm.replica_step.function
            concrete = function._list_all_concrete_functions()
            results["xla_must_compile"] = bool(concrete) and all(
                c.function_def.attr["_XlaMustCompile"].b for c in concrete
            )
            results["keras_jit_compile"] = lm.jit_compile
            results["compile_config_jit"] = lm.get_compile_config()["jit_compile"]
            print("MARK end of the mirrored XLA run", file=sys.stderr, flush=True)
    # The guard is the same code after either step; the per-replica XLA step is the one of interest.
    results["non_finite_jit_True"] = non_finite(mirrored_strategy, True)
    results["out_of_vocabulary"] = out_of_vocabulary(mirrored_strategy)
    _, losses, lanes = train(distribute.get_strategy("one_device", devices=["/cpu:0"]), False)
    results["one_device"] = {"losses": losses, "lanes": lanes}
    out = {
        "losses": {k: v["losses"] for k, v in results.items() if isinstance(v, dict) and "losses" in v},
        "lane_difference": {
            k: max(float(np.abs(v["lanes"][n] - results["one_device"]["lanes"][n]).max())
                   for n in v["lanes"])
            for k, v in results.items() if isinstance(v, dict) and "lanes" in v
        },
        "non_finite": {k: v for k, v in results.items() if k.startswith("non_finite")},
        "out_of_vocabulary": results["out_of_vocabulary"],
        "replicas": mirrored_strategy.num_replicas_in_sync,
        **{k: v for k, v in results.items() if not isinstance(v, dict)},
    }
    print("RESULT " + json.dumps(out), flush=True)


def worker(output):
    strategy = distribute.get_strategy("multi_worker")
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    texts = [f"worker document {i}: " + "abc " * (5 + i) for i in range(16)]
    source, tokenizer = data.IterableSource(texts), data.ByteTokenizer()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        lm = make_lm(vocabulary_size=264)
        lm.build({"token_ids": (4, 2 * W)})  # the global batch: 2 lanes per worker
        lm.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=True)
    dataset = distribute.distribute_lanes(
        strategy,
        lambda batch, context: data.lane_dataset(source, tokenizer, batch, 2 * W, repeat=True,
                                                 input_context=context),
        global_batch_size=4,
    )
    record = StepLosses()
    lm.fit(dataset, steps_per_epoch=4, epochs=1, verbose=0, callbacks=[record])
    np.savez(os.path.join(output, f"worker{index}.npz"), *[v.numpy() for v in lm.backbone.weights])
    print("RESULT " + json.dumps({"losses": record.losses, "replicas": strategy.num_replicas_in_sync}),
          flush=True)


if __name__ == "__main__":
    mirrored() if sys.argv[1] == "mirrored" else worker(sys.argv[2])
