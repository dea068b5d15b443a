"""XLA under tf.distribute: training step time with and without XLA, in one run, as ratios.

Keras refuses `jit_compile=True` under MirroredStrategy; keras_brt compiles each
replica's forward and backward pass with XLA anyway and keeps the optimizer update
outside (`keras_brt.distribute.replica_xla.py`). This script measures what that buys on
2 logical CPU devices (TensorFlow backend; TF's devices are fixed at start, so it
sets them up itself):

    KERAS_BACKEND=tensorflow python bench/distribute_xla.py

Rows: MirroredStrategy over 2 replicas with the XLA per-replica step and with Keras's
plain graph step, and a single device with and without `jit_compile` for reference.
Each row trains the same model on the same global batch; compile time is excluded
(one warm-up epoch), the median over several timed epochs of a few steps is
reported. Results go to bench/results/distribute_xla_cpu.json.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import time

os.environ["KERAS_BACKEND"] = "tensorflow"

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_brt  # noqa: E402
from keras_brt import distribute  # noqa: E402

CONFIG = dict(vocabulary_size=264, num_layers=4, hidden_dim=128, num_heads=4, head_dim=32,
              intermediate_dim=512, block_size=64, num_state_vectors=64, recurrent_layers=(-2,))


def dataset(batch, segment_length):
    rng = np.random.default_rng(0)
    ids = rng.integers(3, CONFIG["vocabulary_size"], (batch, segment_length)).astype("int32")
    x = {"token_ids": ids, "start_of_sequence": np.zeros((batch,), bool)}
    return tf.data.Dataset.from_tensors((x, ids)).repeat()


def measure(label, strategy, jit_compile, batch, segment_length, steps, repeats):
    keras.utils.set_random_seed(0)
    with distribute.strategy_scope(strategy):
        backbone = keras_brt.models.BlockRecurrentTransformerBackbone(**CONFIG)
        lm = keras_brt.models.BlockRecurrentTransformerCausalLM(backbone)
        lm.compile(optimizer=keras.optimizers.AdamW(1e-4), jit_compile=jit_compile)
    data = dataset(batch, segment_length)
    lm.fit(data, epochs=1, steps_per_epoch=2, verbose=0)  # traces and compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        history = lm.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)  # logs come back to the host
        times.append((time.perf_counter() - start) / steps)
    xla = bool(getattr(lm, "replica_jit_compile", False)) or lm.jit_compile is True
    return {"setup": label, "replicas": strategy.num_replicas_in_sync, "jit_compile": jit_compile,
            "xla": xla, "step_seconds": statistics.median(times), "step_seconds_all": times,
            "tokens_per_second": batch * segment_length / statistics.median(times),
            "final_loss": float(history.history["loss"][-1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (lanes)")
    parser.add_argument("--segment-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4, help="steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per row")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    mirrored = distribute.get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    one = distribute.get_strategy("one_device", devices=["/cpu:0"])
    rows = []
    for label, strategy, jit in (("Mirrored x2, XLA per replica", mirrored, True),
                                 ("Mirrored x2, no XLA", mirrored, False),
                                 ("one device, XLA", one, True),
                                 ("one device, no XLA", one, False)):
        rows.append(measure(label, strategy, jit, args.batch_size, args.segment_length,
                            args.steps, args.repeats))
        print(f"measured {label}: {rows[-1]['step_seconds'] * 1e3:.0f} ms/step", flush=True)

    print(f"\nTensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores as 2 "
          f"logical devices; global batch {args.batch_size} x {args.segment_length} tokens; "
          f"median of {args.repeats} epochs of {args.steps} steps")
    print(f"{'setup':<32}{'ms/step':>10}{'tokens/s':>11}{'speed-up':>10}")
    baseline = {r["setup"].split(",")[0]: r for r in rows if not r["jit_compile"]}
    for r in rows:
        r["speedup_over_no_xla"] = baseline[r["setup"].split(",")[0]]["step_seconds"] / r["step_seconds"]
        print(f"{r['setup']:<32}{r['step_seconds'] * 1e3:>10.0f}{r['tokens_per_second']:>11.0f}"
              f"{r['speedup_over_no_xla']:>9.2f}x")

    output = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                         "distribute_xla_cpu.json")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        json.dump({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.node(), "processor": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "config": {**CONFIG, "recurrent_layers": list(CONFIG["recurrent_layers"])},
            "batch_size": args.batch_size, "segment_length": args.segment_length,
            "steps": args.steps, "repeats": args.repeats, "rows": rows,
        }, f, indent=2)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
