"""Data-parallel scaling on JAX: training tokens/s on 1, 2, 4, 8 devices with
`keras_brt.distribute.data_parallel()` (lanes carried per device), and the same losses as
one device over the first steps, in one run.

    KERAS_BACKEND=jax python bench/scaling.py --size paper --dtype mixed_bfloat16   # several GPUs
    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax \\
        python bench/scaling.py --size cpu --devices 1,2 --steps 5                   # a dry run

Throughput: each device keeps the size's per-device batch (weak scaling: N devices train
N times the lanes), `--steps` timed steps through `fit()` after two warm-up `fit()` calls;
efficiency = tokens/s on N ÷ (N × tokens/s on one device without a distribution).
Losses: the largest global batch of the run, trained `--loss-steps` steps from the same
initial weights and data on every device count; the table gives the largest difference
from one device. Several GPUs need NCCL's NVLink multicast off (`NCCL_NVLS_ENABLE=0`,
set here unless given). Results go to bench/results/ as JSON with the device kind and count.
"""

import argparse
import os
import time

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_brt  # noqa: E402
from keras_brt.training import StepLosses  # noqa: E402
from speed import SIZES, backbone_config, device_kind, write_jax_results  # noqa: E402


def make_lm(size, dtype):
    keras.utils.set_random_seed(0)
    config = backbone_config(size)
    config["recurrent_layers"] = (SIZES[size]["recurrent_index"],)
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM(
        keras_brt.models.BlockRecurrentTransformerBackbone(**config, dtype=dtype))
    lm.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=True)
    return lm


def batches(size, rows, steps, seed=0):
    """`steps` segments of `rows` lanes: consecutive segments of the same random documents."""
    length = SIZES[size]["segment_length"]
    vocabulary = SIZES[size]["vocabulary_size"]
    ids = np.random.default_rng(seed).integers(0, vocabulary, (rows, steps * length + 1)).astype("int32")
    x = np.concatenate([ids[:, s * length:(s + 1) * length] for s in range(steps)])
    y = np.concatenate([ids[:, s * length + 1:(s + 1) * length + 1] for s in range(steps)])
    starts = np.repeat(np.arange(steps) == 0, rows)
    return {"token_ids": x, "start_of_sequence": starts}, y


def scope(count):
    if count is None:
        import contextlib

        return contextlib.nullcontext()
    devices = keras.distribution.list_devices()[:count]
    return keras_brt.distribute.data_parallel(devices).scope()


def throughput(size, dtype, count, steps):
    """Tokens/s of `steps` steps on `count` devices (None: no distribution, one device)."""
    rows = SIZES[size]["batch_size"] * (count or 1)
    with scope(count):
        lm = make_lm(size, dtype)
        for seed in (10, 11):  # compiles; under a distribution the second fit compiles again
            x, y = batches(size, rows, 2, seed=seed)  # (the lanes, created in the first,
            lm.fit(x, y, batch_size=rows, verbose=0)  # come back sharded)
        x, y = batches(size, rows, steps, seed=1)
        begin = time.perf_counter()
        lm.fit(x, y, batch_size=rows, verbose=0)
        seconds = time.perf_counter() - begin
    tokens = rows * SIZES[size]["segment_length"] * steps
    return {"global_batch": rows, "step_ms": 1000 * seconds / steps, "tokens_per_s": tokens / seconds}


def losses(size, dtype, count, rows, steps):
    with scope(count):
        lm = make_lm(size, dtype)
        record = StepLosses()
        x, y = batches(size, rows, steps, seed=2)
        lm.fit(x, y, batch_size=rows, verbose=0, callbacks=[record])
    return record.losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="paper")
    parser.add_argument("--dtype", default="mixed_bfloat16")
    parser.add_argument("--devices", default="1,2,4,8", help="device counts (those present are run)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per device count")
    parser.add_argument("--loss-steps", type=int, default=4)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if keras.backend.backend() != "jax":
        raise SystemExit("bench/scaling.py measures keras.distribution: run with KERAS_BACKEND=jax")

    present = len(keras.distribution.list_devices())
    counts = [n for n in (int(c) for c in args.devices.split(",")) if n <= present]
    print(f"{present} {device_kind()} device(s); measuring {counts}", flush=True)
    base = throughput(args.size, args.dtype, None, args.steps)
    rows = []
    for count in counts:
        row = {"devices": count, **throughput(args.size, args.dtype, count, args.steps)}
        row["efficiency"] = row["tokens_per_s"] / (count * base["tokens_per_s"])
        rows.append(row)
        print(f"  {count} device(s): {row['tokens_per_s']:.0f} tokens/s", flush=True)

    global_batch = SIZES[args.size]["batch_size"] * max(counts)
    reference = losses(args.size, args.dtype, None, global_batch, args.loss_steps)
    check = {count: losses(args.size, args.dtype, count, global_batch, args.loss_steps)
             for count in counts}
    for row in rows:
        row["max_loss_difference_from_one_device"] = float(
            np.abs(np.subtract(check[row["devices"]], reference)).max())

    print(f"\n{device_kind()}, JAX, {args.dtype}, {args.size} size, "
          f"{SIZES[args.size]['segment_length']} tokens a lane, "
          f"{SIZES[args.size]['batch_size']} lanes a device; no distribution: "
          f"{base['tokens_per_s']:.0f} tokens/s")
    print(f"| devices | global batch | ms/step | tokens/s | efficiency | max loss Δ vs 1 device "
          f"({args.loss_steps} steps, batch {global_batch}) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['devices']} | {row['global_batch']} | {row['step_ms']:.1f} | "
              f"{row['tokens_per_s']:.0f} | {row['efficiency']:.2f} | "
              f"{row['max_loss_difference_from_one_device']:.2e} |")
    write_jax_results(
        args.output, f"scaling_{args.size}_jax_{args.dtype}_{device_kind().replace(' ', '_')}"
                     f"_x{max(counts)}.json",
        device_count=present, dtype_policy=args.dtype, size=args.size, config=SIZES[args.size],
        steps=args.steps, loss_steps=args.loss_steps, one_device_without_distribution=base,
        reference_losses=reference, losses={str(k): v for k, v in check.items()}, rows=rows,
        xla_flags=os.environ.get("XLA_FLAGS", ""), nccl_nvls_enable=os.environ["NCCL_NVLS_ENABLE"])


if __name__ == "__main__":
    main()
