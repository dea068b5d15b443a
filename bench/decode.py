"""Generation speed and memory: decode tokens/s at several batch sizes, and peak memory
for a long prompt against a short one, in one run.

    KERAS_BACKEND=tensorflow python bench/decode.py --size cpu
    KERAS_BACKEND=jax python bench/decode.py --size paper --dtype mixed_bfloat16   # on a GPU

Decode speed: `generate()` on a one-block prompt, `--new-tokens` greedy tokens per row,
timed after a first call that compiles (the same shapes, so no retrace), median of
`--repeats`; tokens/s counts every row's new tokens. Memory: each prompt length runs in a
fresh process (the rise of peak RSS during the call on CPU, the device's peak bytes in
use on a GPU), generating `--new-tokens` after the prompt; with a fixed-size cache the
lengths should need about the same (only the int32 prompt buffer grows). For reference,
the same prompts through one compiled `call_with_state` over the whole prompt, whose
activations grow with the length. Results go to bench/results/ as JSON.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import keras
import numpy as np

import keras_brt

SIZES = {
    "cpu": dict(vocabulary_size=264, num_layers=4, hidden_dim=128, num_heads=4, head_dim=32,
                intermediate_dim=512, block_size=64, num_state_vectors=64, recurrent_layers=(-2,)),
    "paper": dict(vocabulary_size=32128, num_layers=12, hidden_dim=1024, num_heads=8, head_dim=128,
                  intermediate_dim=4096, block_size=512, num_state_vectors=512, recurrent_layers=(-3,)),
}


def make_lm(size, dtype):
    keras.utils.set_random_seed(0)
    backbone = keras_brt.models.BlockRecurrentTransformerBackbone(**SIZES[size], dtype=dtype)
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM(backbone)
    lm.build()
    return lm


def prompts(batch, length, vocabulary_size):
    return np.random.default_rng(0).integers(3, vocabulary_size, (batch, length)).astype("int32")


def decode_speed(lm, batch, new_tokens, repeats):
    w = lm.backbone.block_size
    ids = prompts(batch, w + 1, lm.backbone.vocabulary_size)
    max_length = w + 1 + new_tokens
    lm.generate(ids, max_length=max_length)  # compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        lm.generate(ids, max_length=max_length)  # returns numpy: synchronised
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"batch": batch, "new_tokens": new_tokens, "seconds": seconds, "seconds_all": times,
            "tokens_per_second": batch * new_tokens / seconds,
            "ms_per_step": 1e3 * seconds / new_tokens}


def peak_memory_probe(size, dtype, prompt_length, new_tokens, kind):
    """Runs in a fresh process: peak memory of `generate` after a `prompt_length` prompt
    (kind "generate"), or of one compiled `call_with_state` over the whole prompt (kind
    "forward", the reference that grows with the length)."""
    lm = make_lm(size, dtype)
    ids = prompts(1, prompt_length, lm.backbone.vocabulary_size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    if kind == "generate":
        lm.generate(ids, max_length=prompt_length + new_tokens)
    else:
        from keras_brt.models.compiling import compile_function

        forward = compile_function(lm, lambda x: lm.call_with_state(x)[0][:, -1])
        np.asarray(forward(ids))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"kind": kind, "prompt_length": prompt_length, "new_tokens": new_tokens,
              "seconds_with_compile": seconds, "peak_rss_bytes": peak,
              "rss_peak_increase_bytes": max(0, peak - before)}
    if keras.backend.backend() == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            result["device_peak_bytes"] = stats["peak_bytes_in_use"]
    print("PROBE " + json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-prompts", default="1000,100000")
    parser.add_argument("--probe", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe-kind", default="generate", help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.probe is not None:
        return peak_memory_probe(args.size, args.dtype, args.probe, args.new_tokens, args.probe_kind)

    lm = make_lm(args.size, args.dtype)
    speed = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        speed.append(decode_speed(lm, batch, args.new_tokens, args.repeats))
        print(f"measured batch {batch}: {speed[-1]['tokens_per_second']:.0f} tokens/s", flush=True)
    memory = []
    for kind in ("generate", "forward"):
        for length in (int(n) for n in args.memory_prompts.split(",")):
            run = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--size", args.size, "--dtype", args.dtype,
                 "--new-tokens", str(args.new_tokens), "--probe", str(length), "--probe-kind", kind],
                capture_output=True, text=True,
                env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
            )
            if run.returncode:
                print(f"{kind} with a {length}-token prompt failed: {run.stderr[-1500:]}", flush=True)
                memory.append({"kind": kind, "prompt_length": length, "failed": run.stderr[-1500:]})
                continue
            memory.append(json.loads(run.stdout.split("PROBE ")[1]))
            print(f"measured {kind} with a {length}-token prompt", flush=True)

    print(f"\nbackend={keras.backend.backend()} dtype={args.dtype} size={args.size} greedy, "
          f"{args.new_tokens} new tokens after a {lm.backbone.block_size + 1}-token prompt")
    print(f"{'batch':>6}{'ms/step':>10}{'tokens/s':>12}")
    for r in speed:
        print(f"{r['batch']:>6}{r['ms_per_step']:>10.2f}{r['tokens_per_second']:>12.0f}")
    ok = [m for m in memory if "failed" not in m]
    key = "device_peak_bytes" if ok and all("device_peak_bytes" in m for m in ok) else "rss_peak_increase_bytes"
    print(f"\n{'what':<10}{'prompt':>8}{'peak MiB (' + key + ')':>40}{'s incl. compile':>17}")
    for m in memory:
        if "failed" in m:
            print(f"{m['kind']:<10}{m['prompt_length']:>8}{'failed (see JSON)':>40}")
            continue
        print(f"{m['kind']:<10}{m['prompt_length']:>8}{m[key] / 2**20:>40.1f}"
              f"{m['seconds_with_compile']:>17.1f}")

    output = args.output or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results",
        f"decode_{args.size}_{keras.backend.backend()}_{args.dtype}.json")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        json.dump({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.node(), "processor": platform.processor() or platform.machine(),
            "devices": [str(d) for d in keras.distribution.list_devices()],
            "backend": keras.backend.backend(), "keras": keras.__version__, "dtype_policy": args.dtype,
            "size": args.size, "config": {k: list(v) if isinstance(v, tuple) else v
                                          for k, v in SIZES[args.size].items()},
            "sampler": "greedy", "speed": speed, "memory": memory, "memory_measure": key,
        }, f, indent=2)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
