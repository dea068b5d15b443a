"""Training speed of Rec:fixed:skip against the paper's baselines, in one run, as ratios.

The paper's Table 1 step-time column: every model at the same width, the same number
of tokens per step (XL:n trains on segments of n tokens with a larger batch), step
time relative to Slide:(L+1). Compile time is excluded (warm-up steps), the median of
several steps is reported, and every variant is measured in the same process.

    KERAS_BACKEND=tensorflow python bench/speed.py --size cpu
    KERAS_BACKEND=jax python bench/speed.py --size paper --dtype mixed_bfloat16   # on a GPU

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


def variants(size):
    """(label, backbone overrides, segment length, batch) with equal tokens per step."""
    s = SIZES[size]
    layers, w, t, b = s["num_layers"], s["block_size"], s["segment_length"], s["batch_size"]
    tokens = t * b
    out = [
        ("Rec:fixed:skip", dict(recurrent_layers=(s["recurrent_index"],)), t, b),
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


def measure(size, label, overrides, segment_length, batch, steps, warmup, dtype):
    config = {k: v for k, v in SIZES[size].items()
              if k not in ("recurrent_index", "segment_length", "batch_size")}
    backbone = keras_brt.models.BlockRecurrentTransformerBackbone(**{**config, **overrides}, dtype=dtype)
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM(backbone)
    lm.compile(optimizer=keras.optimizers.AdamW(1e-4), jit_compile=True)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config["vocabulary_size"], (batch, segment_length)).astype("int32")
    x = {"token_ids": ids, "start_of_sequence": np.zeros((batch,), bool)}
    lm.build({"token_ids": ids.shape})
    for _ in range(warmup):
        lm.train_on_batch(x, ids)  # compiles; returns host values, so it synchronises
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        lm.train_on_batch(x, ids)
        times.append(time.perf_counter() - start)
    step = statistics.median(times)
    tokens = batch * segment_length
    flops = model_flops_per_token(backbone, segment_length) * tokens
    return {
        "model": label, "segment_length": segment_length, "batch": batch, "tokens_per_step": tokens,
        "step_seconds": step, "step_seconds_all": times, "tokens_per_second": tokens / step,
        "model_flops_per_step": flops, "parameters": backbone.count_params(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default="float32", help="dtype policy, e.g. mixed_bfloat16")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for MFU (989 for an H100 in bf16)")
    parser.add_argument("--only", default=None, help="comma-separated model labels")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    rows = []
    for label, overrides, t, b in variants(args.size):
        if args.only and label not in args.only.split(","):
            continue
        rows.append(measure(args.size, label, overrides, t, b, args.steps, args.warmup, args.dtype))
        print(f"measured {label}: {rows[-1]['step_seconds'] * 1e3:.1f} ms/step", flush=True)

    reference = next((r for r in rows if r["model"] == f"Slide:{SIZES[args.size]['num_layers'] + 1}"), rows[0])
    print(f"\nbackend={keras.backend.backend()} dtype={args.dtype} size={args.size} jit_compile=True "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    header = f"{'model':<16}{'T':>6}{'B':>5}{'ms/step':>10}{'tokens/s':>12}{'÷ ' + reference['model']:>14}"
    if args.peak_tflops:
        header += f"{'MFU':>8}"
    print(header)
    for r in rows:
        r["ratio_to_reference"] = r["step_seconds"] / reference["step_seconds"]
        line = (f"{r['model']:<16}{r['segment_length']:>6}{r['batch']:>5}{r['step_seconds'] * 1e3:>10.1f}"
                f"{r['tokens_per_second']:>12.0f}{r['ratio_to_reference']:>14.2f}")
        if args.peak_tflops:
            r["mfu"] = r["model_flops_per_step"] / r["step_seconds"] / (args.peak_tflops * 1e12)
            line += f"{r['mfu']:>8.1%}"
        print(line)
    by_name = {r["model"]: r for r in rows}
    layers = SIZES[args.size]["num_layers"]
    checks = {}
    if "Rec:fixed:skip" in by_name and f"Slide:{layers}" in by_name:
        checks["rec_over_slide"] = by_name["Rec:fixed:skip"]["step_seconds"] / by_name[f"Slide:{layers}"]["step_seconds"]
        print(f"Rec ÷ Slide:{layers} = {checks['rec_over_slide']:.2f} (paper 1.06, target ≤ 1.10)")
    w4 = f"XL:{4 * SIZES[args.size]['block_size']}"
    if "Rec:fixed:skip" in by_name and w4 in by_name:
        checks["xl4w_over_rec"] = by_name[w4]["step_seconds"] / by_name["Rec:fixed:skip"]["step_seconds"]
        print(f"{w4} ÷ Rec = {checks['xl4w_over_rec']:.2f} (paper XL:2048 ÷ Rec 2.13, target ≥ 2.0)")

    output = args.output or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results",
        f"speed_{args.size}_{keras.backend.backend()}_{args.dtype}.json",
    )
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        json.dump({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.node(), "processor": platform.processor() or platform.machine(),
            "devices": [str(d) for d in _devices()], "backend": keras.backend.backend(),
            "keras": keras.__version__, "dtype_policy": args.dtype, "size": args.size,
            "config": SIZES[args.size], "jit_compile": True, "steps": args.steps,
            "warmup": args.warmup, "rows": rows, "checks": checks,
        }, f, indent=2)
    print(f"wrote {output}")


def _devices():
    try:
        return keras.distribution.list_devices()
    except Exception:  # Not every backend lists devices.
        return []


if __name__ == "__main__":
    main()
