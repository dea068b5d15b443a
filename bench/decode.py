"""Generation speed and memory: decode tokens/s at several batch sizes, and peak memory
for a long prompt against a short one, in one run.

    KERAS_BACKEND=tensorflow python bench/decode.py --size cpu
    KERAS_BACKEND=jax python bench/decode.py --size paper --dtype mixed_bfloat16   # on a GPU

Decode speed: `generate()` on a one-block prompt, `--new-tokens` greedy tokens per row,
timed after a first call that compiles (the same shapes, so no retrace), median of
`--repeats`; tokens/s counts every row's new tokens. Memory: each prompt length runs in a
fresh process (peak RSS on CPU, the device's peak bytes in use on a GPU), generating
`--new-tokens` after the prompt; with a fixed-size cache the two should be about equal
(only the int32 prompt buffer grows). Results go to bench/results/ as JSON.
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


def peak_memory_probe(size, dtype, prompt_length, new_tokens):
    """Runs in a fresh process: generate after a `prompt_length` prompt, report peak memory."""
    lm = make_lm(size, dtype)
    ids = prompts(1, prompt_length, lm.backbone.vocabulary_size)
    start = time.perf_counter()
    lm.generate(ids, max_length=prompt_length + new_tokens)
    seconds = time.perf_counter() - start
    result = {"prompt_length": prompt_length, "new_tokens": new_tokens, "seconds_with_compile": seconds,
              "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
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
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.probe is not None:
        return peak_memory_probe(args.size, args.dtype, args.probe, args.new_tokens)

    lm = make_lm(args.size, args.dtype)
    speed = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        speed.append(decode_speed(lm, batch, args.new_tokens, args.repeats))
        print(f"measured batch {batch}: {speed[-1]['tokens_per_second']:.0f} tokens/s", flush=True)
    memory = []
    for length in (int(n) for n in args.memory_prompts.split(",")):
        run = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--size", args.size, "--dtype", args.dtype,
             "--new-tokens", str(args.new_tokens), "--probe", str(length)],
            capture_output=True, text=True, env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
        )
        if run.returncode:
            raise SystemExit(run.stderr[-3000:])
        memory.append(json.loads(run.stdout.split("PROBE ")[1]))
        print(f"measured a {length}-token prompt", flush=True)

    print(f"\nbackend={keras.backend.backend()} dtype={args.dtype} size={args.size} greedy, "
          f"{args.new_tokens} new tokens after a {lm.backbone.block_size + 1}-token prompt")
    print(f"{'batch':>6}{'ms/step':>10}{'tokens/s':>12}")
    for r in speed:
        print(f"{r['batch']:>6}{r['ms_per_step']:>10.2f}{r['tokens_per_second']:>12.0f}")
    key = "device_peak_bytes" if all("device_peak_bytes" in m for m in memory) else "peak_rss_bytes"
    print(f"\n{'prompt':>8}{'peak MiB (' + key + ')':>34}{'÷ first':>9}{'s incl. compile':>17}")
    for m in memory:
        m["ratio_to_first"] = m[key] / memory[0][key]
        print(f"{m['prompt_length']:>8}{m[key] / 2**20:>34.1f}{m['ratio_to_first']:>9.2f}"
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
