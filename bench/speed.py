"""Training speed of Rec:fixed:skip against the paper's baselines, in one run, as ratios.

The paper's Table 1 step-time column: every model at the same width, the same number
of tokens per step (XL:n trains on segments of n tokens with a larger batch), step
time relative to Slide:(L+1). Compile time is excluded (warm-up steps); the step time is
that of several steps run through `fit()` (steps dispatched back to back, as in training),
next to the median of synchronous `train_on_batch` calls, which also pay the host's
per-step work; every variant is measured in the same process.

    KERAS_BACKEND=tensorflow python bench/speed.py --size cpu
    KERAS_BACKEND=jax python bench/speed.py --size paper --dtype mixed_bfloat16   # on a GPU

`Rec/cell-loop` is Rec:fixed:skip with the whole cell inside the loop over blocks
(`BlockRecurrentRNN(parallel_token_path=False)`), to measure what running the
state-independent token work over all blocks at once buys; `Rec/looped` keeps the loop
over blocks rolled (`unroll=False`; the models unroll calls of at most 16 blocks).

Sizes: `cpu` (4 layers, D=128, W=64), `bytes` (the byte-level small configuration:
6 layers, D=512, 8x64 heads, W=512, S=512, recurrent layer 4, T=2048, batch 16) and
`paper` (12 layers, D=1024, 8x128, MLP 4096, V=32128, W=512, S=512, T=4096, recurrent
layer 10, batch 8). Results go to bench/results/ as JSON.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import keras
import numpy as np

import keras_brt

SIZES = {
    "cpu": dict(vocabulary_size=264, num_layers=4, hidden_dim=128, num_heads=4, head_dim=32,
                intermediate_dim=512, block_size=64, num_state_vectors=64, recurrent_index=-2,
                segment_length=512, batch_size=4),
    "bytes": dict(vocabulary_size=256, num_layers=6, hidden_dim=512, num_heads=8, head_dim=64,
                  intermediate_dim=2048, block_size=512, num_state_vectors=512, recurrent_index=3,
                  segment_length=2048, batch_size=16),
    "paper": dict(vocabulary_size=32128, num_layers=12, hidden_dim=1024, num_heads=8, head_dim=128,
                  intermediate_dim=4096, block_size=512, num_state_vectors=512, recurrent_index=-3,
                  segment_length=4096, batch_size=8),
}


def backbone_config(size):
    """The backbone arguments of a size (SIZES also holds the run's T, batch and recurrent index)."""
    return {k: v for k, v in SIZES[size].items()
            if k not in ("recurrent_index", "segment_length", "batch_size")}


def variants(size):
    """(label, backbone overrides, segment length, batch) with equal tokens per step."""
    s = SIZES[size]
    layers, w, t, b = s["num_layers"], s["block_size"], s["segment_length"], s["batch_size"]
    tokens = t * b
    out = [
        ("Rec:fixed:skip", dict(recurrent_layers=(s["recurrent_index"],)), t, b),
        ("Rec/cell-loop", dict(recurrent_layers=(s["recurrent_index"],), parallel_token_path=False), t, b),
        ("Rec/looped", dict(recurrent_layers=(s["recurrent_index"],), unroll=False), t, b),
        ("Feedback:fixed:skip", dict(recurrent_layers=(s["recurrent_index"],), feedback=True), t, b),
        (f"Slide:{layers}", dict(recurrent_layers=()), t, b),
        (f"Slide:{layers + 1}", dict(recurrent_layers=(), num_layers=layers + 1), t, b),
    ]
    for n in (w, 2 * w, 4 * w):
        out.append((f"XL:{n}", dict(recurrent_layers=(), block_size=n), n, tokens // n))
    return out


def model_flops_per_token(backbone, segment_length):
    """6 x non-embedding params + 6 D V (output layer) + attention (performance.md)."""
    d, v = backbone.hidden_dim, backbone.vocabulary_size
    params = backbone.count_params() - v * d
    w = backbone.block_size
    attention = 0
    for i in range(backbone.num_layers):
        keys = 1.5 * w + (backbone.num_state_vectors if i in backbone.recurrent_layer_indices else 0)
        attention += 3 * 4 * keys * d
    return 6 * params + 6 * d * v + attention


def measure(size, label, overrides, segment_length, batch, steps, warmup, dtype, timing, fit_steps):
    config = backbone_config(size)
    overrides = dict(overrides)
    parallel = overrides.pop("parallel_token_path", True)
    unroll = overrides.pop("unroll", None)
    backbone = keras_brt.models.BlockRecurrentTransformerBackbone(**{**config, **overrides}, dtype=dtype)
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM(backbone)
    backbone.build()
    for layer in backbone.transformer_layers:
        if hasattr(layer, "parallel_token_path"):
            layer.parallel_token_path = parallel  # False: the whole cell inside the block loop
            if unroll is not None:
                layer.unroll_setting = unroll  # False: never unroll the loop over blocks
    lm.compile(optimizer=keras.optimizers.AdamW(1e-4), jit_compile=True)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config["vocabulary_size"], (batch, segment_length)).astype("int32")
    x = {"token_ids": ids, "start_of_sequence": np.zeros((batch,), bool)}
    tokens = batch * segment_length
    row = {"model": label, "segment_length": segment_length, "batch": batch, "tokens_per_step": tokens}
    try:
        lm.build({"token_ids": ids.shape})
        row["parameters"] = backbone.count_params()
        row["model_flops_per_step"] = model_flops_per_token(backbone, segment_length) * tokens
        losses = [float(lm.train_on_batch(x, ids, return_dict=True)["loss"]) for _ in range(warmup)]  # compiles; synchronises
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            losses.append(float(lm.train_on_batch(x, ids, return_dict=True)["loss"]))
            times.append(time.perf_counter() - start)
        fit_step = None
        if timing == "fit":
            # The same step through fit(), which dispatches steps back to back so that the
            # host's per-step work overlaps the device's (train_on_batch waits for each step).
            xs = {k: np.concatenate([v] * fit_steps) for k, v in x.items()}
            ys = np.concatenate([ids] * fit_steps)
            lm.fit({k: v[:2 * batch] for k, v in xs.items()}, ys[:2 * batch], batch_size=batch,
                   epochs=1, verbose=0, shuffle=False)  # warm-up
            start = time.perf_counter()
            history = lm.fit(xs, ys, batch_size=batch, epochs=1, verbose=0, shuffle=False)
            fit_step = (time.perf_counter() - start) / fit_steps
            losses.append(float(history.history["loss"][-1]))
    except Exception as error:  # e.g. out of device memory: reported, never timed.
        return {**row, "error": f"{type(error).__name__}: {str(error)[:300]}"}
    if not np.all(np.isfinite(losses)):
        return {**row, "error": f"non-finite loss {losses}"}
    sync_step = statistics.median(times)
    step = fit_step if timing == "fit" else sync_step
    return {**row, "step_seconds": step, "fit_step_seconds": fit_step, "synchronous_step_seconds": sync_step,
            "synchronous_step_seconds_all": times, "tokens_per_second": tokens / step, "losses": losses}


def growth(size, dtype, chunk, totals, batch):
    """Inference time per token and memory over `totals` tokens per lane, in `chunk`-token
    calls that carry the state (Rec:fixed:skip). Each total runs in the same compiled call."""
    config = backbone_config(size)
    backbone = keras_brt.models.BlockRecurrentTransformerBackbone(
        **config, recurrent_layers=(SIZES[size]["recurrent_index"],), dtype=dtype)
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM(backbone)
    lm.build()
    from keras_brt.models.compiling import compile_function

    forward = compile_function(lm, lambda ids, state: lm.call_with_state(ids, state))
    ids = np.random.default_rng(0).integers(0, config["vocabulary_size"], (batch, chunk)).astype("int32")
    state = lm.initial_state(batch)
    for _ in range(2):  # compile and warm up
        logits, state = forward(ids, state)
        np.asarray(logits[:, -1])
    rows = []
    for total in totals:
        state = lm.initial_state(batch)
        start = time.perf_counter()
        for _ in range(total // chunk):
            logits, state = forward(ids, state)
        np.asarray(logits[:, -1])  # synchronise
        seconds = time.perf_counter() - start
        row = {"tokens_per_lane": total, "batch": batch, "chunk": chunk, "seconds": seconds,
               "microseconds_per_token": 1e6 * seconds / (total * batch)}
        memory = _device_peak_bytes()
        if memory is not None:
            row["device_peak_bytes"] = memory
        rows.append(row)
    return rows


def _device_peak_bytes():
    if keras.backend.backend() != "jax":
        return None
    import jax

    return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--steps", type=int, default=5, help="synchronous train_on_batch steps")
    parser.add_argument("--fit-steps", type=int, default=20,
                        help="steps in the timed fit() (its first dispatch and last wait are spread over them)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default="float32", help="dtype policy, e.g. mixed_bfloat16")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for MFU (989 for an H100 in bf16)")
    parser.add_argument("--only", default=None, help="comma-separated model labels")
    parser.add_argument("--growth", default="4096,16384,65536",
                        help="tokens per lane for the cost-growth table ('' to skip)")
    parser.add_argument("--attention", choices=("fused", "reference"), default="fused",
                        help="reference: keras.config.disable_flash_attention() (float32 logits written out)")
    parser.add_argument("--timing", choices=("fit", "sync"), default=None,
                        help="step time from fit() (default on JAX) or from synchronous train_on_batch "
                             "calls only (default on TensorFlow, whose fit() rebuilds its input pipeline "
                             "and recompiles per call)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    timing = args.timing or ("fit" if keras.backend.backend() == "jax" else "sync")
    if args.attention == "reference":
        keras.config.disable_flash_attention()

    rows = []
    for label, overrides, t, b in variants(args.size):
        if args.only and label not in args.only.split(","):
            continue
        rows.append(measure(args.size, label, overrides, t, b, args.steps, args.warmup, args.dtype, timing,
                            args.fit_steps))
        done = rows[-1]
        print(f"measured {label}: " + (f"{done['step_seconds'] * 1e3:.1f} ms/step" if "error" not in done
                                         else f"FAILED ({done['error'][:120]})"), flush=True)

    valid = [r for r in rows if "error" not in r]
    reference = next((r for r in valid if r["model"] == f"Slide:{SIZES[args.size]['num_layers'] + 1}"),
                     valid[0] if valid else None)
    print(f"\ndevice={device_kind()} backend={keras.backend.backend()} dtype={args.dtype} size={args.size} "
          f"jit_compile=True attention={args.attention}; fit ms: "
          + (f"{args.fit_steps} steps through fit() after a warm-up fit; " if timing == "fit" else "not timed; ") +
          f"sync ms: median of {args.steps} train_on_batch calls (each waits for its step); "
          f"tokens/s, ratios and MFU from the {timing} time")
    header = f"{'model':<16}{'T':>6}{'B':>5}{'fit ms':>10}{'sync ms':>9}{'tokens/s':>12}"
    header += f"{'÷ ' + reference['model']:>18}" if reference else ""
    if args.peak_tflops:
        header += f"{'MFU':>8}"
    print(header)
    for r in rows:
        line = f"{r['model']:<16}{r['segment_length']:>6}{r['batch']:>5}"
        if "error" in r:
            print(line + f"  failed: {r['error'][:60]}")
            continue
        r["ratio_to_reference"] = r["step_seconds"] / reference["step_seconds"]
        fit_ms = "-" if r["fit_step_seconds"] is None else f"{r['fit_step_seconds'] * 1e3:.1f}"
        line += (f"{fit_ms:>10}{r['synchronous_step_seconds'] * 1e3:>9.1f}"
                 f"{r['tokens_per_second']:>12.0f}"
                 f"{r['ratio_to_reference']:>18.2f}")
        if args.peak_tflops:
            r["mfu"] = r["model_flops_per_step"] / r["step_seconds"] / (args.peak_tflops * 1e12)
            line += f"{r['mfu']:>8.1%}"
        print(line)
    by_name = {r["model"]: r for r in valid}
    layers = SIZES[args.size]["num_layers"]
    checks = {}
    if "Rec:fixed:skip" in by_name and f"Slide:{layers}" in by_name:
        checks["rec_over_slide"] = by_name["Rec:fixed:skip"]["step_seconds"] / by_name[f"Slide:{layers}"]["step_seconds"]
        print(f"Rec ÷ Slide:{layers} = {checks['rec_over_slide']:.2f} (paper 1.06, target ≤ 1.10)")
    w4 = f"XL:{4 * SIZES[args.size]['block_size']}"
    if "Rec:fixed:skip" in by_name and w4 in by_name:
        checks["xl4w_over_rec"] = by_name[w4]["step_seconds"] / by_name["Rec:fixed:skip"]["step_seconds"]
        print(f"{w4} ÷ Rec = {checks['xl4w_over_rec']:.2f} (paper XL:2048 ÷ Rec 2.13, target ≥ 2.0)")

    growth_rows = []
    if args.growth:
        chunk = SIZES[args.size]["segment_length"]
        totals = [int(t) for t in args.growth.split(",")]
        growth_rows = growth(args.size, args.dtype, chunk, totals, batch=1)
        print(f"\ncost growth, Rec:fixed:skip inference, batch 1, calls of {chunk} tokens carrying the state")
        print(f"{'tokens/lane':>12}{'µs/token':>10}{'÷ first':>9}" + ("{:>14}".format("peak MiB")
                                                                 if "device_peak_bytes" in growth_rows[0] else ""))
        for g in growth_rows:
            g["ratio_to_first"] = g["microseconds_per_token"] / growth_rows[0]["microseconds_per_token"]
            line = f"{g['tokens_per_lane']:>12}{g['microseconds_per_token']:>10.1f}{g['ratio_to_first']:>9.2f}"
            if "device_peak_bytes" in g:
                line += f"{g['device_peak_bytes'] / 2**20:>14.0f}"
            print(line)
        checks["growth_64k_over_4k"] = growth_rows[-1]["ratio_to_first"]

    output = args.output or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results",
        f"speed_{args.size}_{keras.backend.backend()}_{args.dtype}.json",
    )
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        json.dump({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.node(), "processor": platform.processor() or platform.machine(),
            "devices": [str(d) for d in _devices()], "device_kind": device_kind(),
            "backend": keras.backend.backend(),
            "keras": keras.__version__, "dtype_policy": args.dtype, "size": args.size,
            "config": SIZES[args.size], "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "attention": args.attention, "timing": timing, "jit_compile": True, "steps": args.steps,
            "fit_steps": args.fit_steps if timing == "fit" else None,
            "warmup": args.warmup, "rows": rows, "growth": growth_rows, "checks": checks,
        }, f, indent=2)
    print(f"wrote {output}")


def write_jax_results(output, default_name, **fields):
    """Writes a JAX profiling result: `fields` with the date, device and versions, to `output`
    or to bench/results/`default_name`; returns the path."""
    import jax

    output = output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", default_name)
    with open(output, "w") as f:
        json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "machine": platform.node(), "backend": "jax",
                   "device": device_kind(), "jax": jax.__version__,
                   "keras": keras.__version__, **fields}, f, indent=2)
    print(f"wrote {output}")
    return output


def device_kind():
    """The accelerator's name (e.g. "NVIDIA H200") on JAX, else the processor's."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.devices()[0].device_kind
    return platform.processor() or platform.machine()


def _devices():
    try:
        return keras.distribution.list_devices()
    except Exception:  # Not every backend lists devices.
        return []


if __name__ == "__main__":
    main()
