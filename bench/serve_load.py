"""Serving under load: requests/s and latency of `keras-brt serve` at 1, 8 and 32 clients.

    KERAS_BACKEND=tensorflow python bench/serve_load.py            # a random model, --size cpu
    KERAS_BACKEND=tensorflow python bench/serve_load.py --size tiny --requests 40

Exports a random model of `--size` (the speed benchmark's CPU configuration by
default), starts KServe's model server on loopback in a separate process (what a
deployment runs: `keras-brt serve`), and has N clients stream documents through
`step` at once, each with its own state, chunk by chunk (`--blocks-per-request`
blocks a request), over real HTTP. Every client sends `--requests` step requests
after one `initial_state`; the first round of each client count is a warm-up and is
not timed. Prints one table (requests/s, tokens/s, p50/p99 latency) and writes JSON
to bench/results/.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import version

import keras
import numpy as np

import keras_brt
from keras_brt.data import ByteTokenizer
from keras_brt.export import export_saved_model

SIZES = {
    "tiny": dict(vocabulary_size=259, num_layers=3, hidden_dim=16, num_heads=2, head_dim=8,
                 intermediate_dim=32, block_size=4, num_state_vectors=3, recurrent_layers=(1,)),
    "cpu": dict(vocabulary_size=264, num_layers=4, hidden_dim=128, num_heads=4, head_dim=32,
                intermediate_dim=512, block_size=64, num_state_vectors=64, recurrent_layers=(-2,)),
}


def post(url, body):
    request = urllib.request.Request(f"{url}:predict", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)["outputs"]


def client(url, chunk, requests, seed):
    """One document stream: `requests` step calls; returns each call's seconds."""
    ids = np.random.default_rng(seed).integers(3, 250, chunk * requests).tolist()
    state = post(url, {"signature_name": "initial_state", "inputs": {"batch_size": 1}})
    times = []
    for start in range(0, len(ids), chunk):
        begin = time.perf_counter()
        outputs = post(url, {"signature_name": "step",
                             "inputs": {"token_ids": [ids[start:start + chunk]], **state}})
        times.append(time.perf_counter() - begin)
        outputs.pop("logits")
        state = outputs
    return times


def start_server(model_dir, port):
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_brt.serving", model_dir, "--port", str(port),
         "--max-body-bytes", str(64 * 2 ** 20)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1/models/brt"
    for _ in range(360):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if json.load(response).get("ready"):
                    return process, url
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("the server did not start")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests", type=int, default=20, help="step requests per client")
    parser.add_argument("--blocks-per-request", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    config = SIZES[args.size]
    keras.utils.set_random_seed(0)
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM(
        keras_brt.models.BlockRecurrentTransformerBackbone(**config))
    lm.build()
    model_dir = export_saved_model(lm, os.path.join(tempfile.mkdtemp(), "brt"),
                                   tokenizer=ByteTokenizer())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process, url = start_server(model_dir, port)
    chunk = config["block_size"] * args.blocks_per_request
    rows = []
    try:
        for count in [int(c) for c in args.clients.split(",")]:
            with concurrent.futures.ThreadPoolExecutor(count) as pool:
                list(pool.map(lambda i: client(url, chunk, 2, 1000 + i), range(count)))  # warm-up
                begin = time.perf_counter()
                times = sum(pool.map(lambda i: client(url, chunk, args.requests, i), range(count)), [])
                wall = time.perf_counter() - begin
            rows.append({
                "clients": count, "requests": len(times), "seconds": wall,
                "requests_per_s": len(times) / wall, "tokens_per_s": len(times) * chunk / wall,
                "p50_ms": 1000 * statistics.median(times),
                "p99_ms": 1000 * float(np.percentile(times, 99)),
            })
            print(f"{count:>3} clients: {rows[-1]['requests_per_s']:.1f} requests/s", flush=True)
    finally:
        process.terminate()
        process.wait(timeout=30)

    base = rows[0]["requests_per_s"]
    print(f"\nkeras-brt serve (KServe {version('kserve')}, TensorFlow SavedModel), "
          f"{args.size} model, {chunk} tokens a request, {os.cpu_count()} CPU cores, loopback HTTP")
    print("| clients | requests/s | × 1 client | tokens/s | p50 latency | p99 latency |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['clients']} | {row['requests_per_s']:.1f} | {row['requests_per_s'] / base:.2f} | "
              f"{row['tokens_per_s']:.0f} | {row['p50_ms']:.1f} ms | {row['p99_ms']:.1f} ms |")
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                         f"serve_load_{args.size}_cpu.json")
    import tensorflow as tf

    with open(output, "w") as f:
        json.dump({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": {"machine": platform.node(), "processor": platform.processor() or platform.machine(),
                       "cpu_cores": os.cpu_count()},
            "backend": f"TensorFlow {tf.__version__} SavedModel in KServe "
                       f"{version('kserve')} (the client and server on one machine)",
            "configuration": {"size": args.size, "model": config, "tokens_per_request": chunk,
                              "requests_per_client": args.requests, "warm_up_requests_per_client": 2},
            "rows": rows,
        }, f, indent=2)
    print(f"results written to {output}")


if __name__ == "__main__":
    main()
