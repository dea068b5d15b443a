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


def mirrored():
    results = {}
    mirrored_strategy = distribute.get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    # The XLA case first, so that TF's one-time "Compiled cluster using XLA" log line can only
    # come from the per-replica step function.
    for jit in (True, False):
        lm, losses, lanes = train(mirrored_strategy, jit)
        results[f"mirrored_jit_{jit}"] = {"losses": losses, "lanes": lanes}
        if jit:
            function = lm.replica_step_function
            concrete = function._list_all_concrete_functions()
            results["xla_must_compile"] = bool(concrete) and all(
                c.function_def.attr["_XlaMustCompile"].b for c in concrete
            )
            results["keras_jit_compile"] = lm.jit_compile
            results["compile_config_jit"] = lm.get_compile_config()["jit_compile"]
            print("MARK end of the mirrored XLA run", file=sys.stderr, flush=True)
    _, losses, lanes = train(distribute.get_strategy("one_device", devices=["/cpu:0"]), False)
    results["one_device"] = {"losses": losses, "lanes": lanes}
    out = {
        "losses": {k: v["losses"] for k, v in results.items() if isinstance(v, dict)},
        "lane_difference": {
            k: max(float(np.abs(v["lanes"][n] - results["one_device"]["lanes"][n]).max())
                   for n in v["lanes"])
            for k, v in results.items() if isinstance(v, dict)
        },
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
