"""A device profile of training steps: where the GPU's time goes, kernel by kernel (JAX).

Runs a few training steps of one model under `jax.profiler.trace` with a Perfetto
trace, reads the trace back and prints the device time per kernel, largest first,
grouped into kinds (matmuls, cuDNN attention, XLA fusions, copies, ...), with the
share of the step. Writes the summary as JSON under bench/results/.

    KERAS_BACKEND=jax python bench/trace_step.py --size paper --dtype mixed_bfloat16 --model rec
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import speed  # noqa: E402

import keras_brt  # noqa: E402


def kind(name):
    lower = name.lower()
    if "fmha" in lower or "flash" in lower or "cudnn" in lower:
        return "cuDNN attention"
    if any(word in lower for word in ("gemm", "cublas", "nvjet", "matmul", "xmma", "cutlass")):
        return "matmul"
    if "memcpy" in lower or "memset" in lower or "copy" in lower:
        return "copy"
    if "fusion" in lower or "loop_" in lower or "input_" in lower or "reduce" in lower:
        return "XLA fusion"
    return "other"


def device_events(trace_dir):
    """(name, microseconds) of every complete event on a GPU stream of the trace."""
    paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    paths += glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no trace JSON under {trace_dir}: {os.listdir(trace_dir)}")
    with gzip.open(paths[0], "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    processes = {e["pid"]: e["args"]["name"] for e in events
                 if e.get("ph") == "M" and e.get("name") == "process_name"}
    gpu = {pid for pid, name in processes.items() if "gpu" in name.lower() or "device" in name.lower()}
    return [(e["name"], float(e["dur"]), float(e["ts"]), (e["pid"], e.get("tid"))) for e in events
            if e.get("ph") == "X" and e.get("pid") in gpu and "dur" in e], processes


def idle_between_kernels(events, longest=1000.0):
    """Microseconds the device streams sit idle between consecutive kernels, counting only
    gaps shorter than `longest` (inside a step; longer ones are the host between steps)."""
    idle, streams = 0.0, collections.defaultdict(list)
    for _, duration, start, stream in events:
        streams[stream].append((start, duration))
    for spans in streams.values():
        spans.sort()
        for (start, duration), (next_start, _) in zip(spans, spans[1:]):
            gap = next_start - (start + duration)
            if 0 < gap < longest:
                idle += gap
    return idle


def hlo_sources(dump_dir):
    """{kernel name: JAX op name} from XLA's optimised HLO dump (XLA_FLAGS=--xla_dump_to=DIR
    --xla_dump_hlo_as_text): each fusion's metadata names the operation it came from."""
    paths = sorted(glob.glob(os.path.join(dump_dir, "*train*after_optimizations.txt")), key=os.path.getsize)
    if not paths:
        return {}
    sources = {}
    pattern = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?(?:fusion|custom-call)\(.*?op_name="([^"]+)"')
    with open(paths[-1]) as f:  # the largest: the training step
        for line in f:
            match = pattern.match(line)
            if match:
                sources[match.group(1).replace(".", "_").replace("-", "_")] = match.group(2)
    return sources


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(speed.SIZES), default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--model", choices=("rec", "slide"), default="rec")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--output", default=None)
    parser.add_argument("--hlo", default=None,
                        help="XLA's dump directory (XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text): "
                             "name the JAX operation behind each kernel")
    args = parser.parse_args()

    s = speed.SIZES[args.size]
    config = speed.backbone_config(args.size)
    recurrent = (s["recurrent_index"],) if args.model == "rec" else ()
    backbone = keras_brt.models.BlockRecurrentTransformerBackbone(
        **config, recurrent_layers=recurrent, dtype=args.dtype)
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM(backbone)
    lm.compile(optimizer=keras.optimizers.AdamW(1e-4), jit_compile=True)
    b, t = s["batch_size"], s["segment_length"]
    ids = np.random.default_rng(0).integers(0, config["vocabulary_size"], (b, t)).astype("int32")
    x = {"token_ids": ids, "start_of_sequence": np.zeros((b,), bool)}
    for _ in range(3):  # compile and warm up
        float(lm.train_on_batch(x, ids, return_dict=True)["loss"])
    trace_dir = tempfile.mkdtemp()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(args.steps):
            float(lm.train_on_batch(x, ids, return_dict=True)["loss"])
    events, processes = device_events(trace_dir)
    if not events:
        raise RuntimeError(f"no device events in the trace; processes: {sorted(processes.values())}")
    total = sum(e[1] for e in events)
    idle = idle_between_kernels(events)
    by_name = collections.Counter()
    for name, d, _, _ in events:
        by_name[name] += d
    by_kind = collections.Counter()
    for name, d in by_name.items():
        by_kind[kind(name)] += d
    per_step = total / args.steps / 1e3
    print(f"\nbackend=jax ({speed.device_kind()}) dtype={args.dtype} size={args.size} "
          f"model={args.model}: device busy {per_step:.1f} ms per step ({args.steps} steps traced)")
    print(f"{len(events) / args.steps:.0f} kernels per step; device idle between them (gaps under 1 ms): "
          f"{idle / args.steps / 1e3:.2f} ms per step")
    print(f"{'kind':<18}{'ms/step':>9}{'share':>8}")
    for k, d in by_kind.most_common():
        print(f"{k:<18}{d / args.steps / 1e3:>9.2f}{d / total:>8.1%}")
    print(f"\n{'kernel':<70}{'ms/step':>9}{'share':>8}")
    sources = hlo_sources(args.hlo) if args.hlo else {}
    for name, d in by_name.most_common(args.top):
        print(f"{name[:68]:<70}{d / args.steps / 1e3:>9.2f}{d / total:>8.1%}")
        if name in sources:
            print(f"    from {sources[name][-150:]}")
    speed.write_jax_results(
        args.output, f"trace_{args.size}_{args.model}_jax_{args.dtype}.json", size=args.size,
        model=args.model, dtype_policy=args.dtype, steps_traced=args.steps, device_ms_per_step=per_step,
        kernels_per_step=len(events) / args.steps, idle_ms_per_step=idle / args.steps / 1e3,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        by_kind_ms_per_step={k: d / args.steps / 1e3 for k, d in by_kind.most_common()},
        top_kernels_ms_per_step={n: d / args.steps / 1e3 for n, d in by_name.most_common(200)},
        kernel_sources={n: sources[n] for n, _ in by_name.most_common(200) if n in sources})


if __name__ == "__main__":
    main()
