"""Training speed of two or more checkouts of keras_brt, A/B in one run, as ratios.

Any change to `fit`, `train_step`, the input checks, the lanes or the data path is
measured against the commit before it on the same machine in the same call
(../shared/design/performance.md): this script runs each checkout's own
`bench/speed.py` in a fresh process, the checkouts in turn (A B A B ...), and prints
each model's fit and synchronous step times per checkout and round, and each
checkout's median fit time over the first checkout's.

    git worktree add /tmp/before HEAD~1
    KERAS_BACKEND=jax python bench/ab_speed.py --checkout before=/tmp/before --checkout now=. \\
        --size bytes --only Rec:fixed:skip,Slide:6 --rounds 2 --dtype mixed_bfloat16
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile


def run_one(directory, size, only, dtype, extra):
    """One `bench/speed.py` process of the checkout `directory`; its JSON rows."""
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "speed.json")
        command = [sys.executable, os.path.join(directory, "bench", "speed.py"), "--size", size,
                   "--dtype", dtype, "--only", only, "--growth", "", "--output", output, *extra]
        # The checkout's own package first (Keras and the rest as installed).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [os.path.abspath(directory), os.environ.get("PYTHONPATH", "")])}
        result = subprocess.run(command, env=env, cwd=directory, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        with open(output) as f:
            return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", required=True,
                        help="NAME=DIRECTORY of a keras_brt checkout (the first is the reference)")
    parser.add_argument("--size", default="bytes", help="comma-separated sizes of bench/speed.py")
    parser.add_argument("--only", default="Rec:fixed:skip", help="comma-separated model labels")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="mixed_bfloat16")
    parser.add_argument("--output", default=None)
    args, extra = parser.parse_known_args()
    checkouts = []
    for item in args.checkout:
        name, _, directory = item.partition("=")
        if not directory or not os.path.isfile(os.path.join(directory, "bench", "speed.py")):
            raise ValueError(f"`--checkout` must be NAME=DIRECTORY of a keras_brt checkout. "
                             f"Received: --checkout={item!r}")
        checkouts.append((name, directory))
    runs = []  # one dict per process
    device = None
    for round_index in range(args.rounds):
        for size in args.size.split(","):
            for name, directory in checkouts:
                result = run_one(directory, size, args.only, args.dtype, extra)
                device = result.get("device_kind", device)
                for row in result["rows"]:
                    runs.append({"round": round_index, "size": size, "checkout": name, **{
                        k: row.get(k) for k in ("model", "fit_step_seconds", "synchronous_step_seconds",
                                                "tokens_per_second", "error")}})
                    print(f"round {round_index} {size} {name} {row['model']}: fit "
                          f"{(row.get('fit_step_seconds') or float('nan')) * 1e3:.1f} ms, sync "
                          f"{(row.get('synchronous_step_seconds') or float('nan')) * 1e3:.1f} ms",
                          flush=True)
                if args.output:  # written as it goes, so that a run cut short keeps its rows
                    write(args, checkouts, device, runs)

    names = [name for name, _ in checkouts]
    print(f"\ndevice={device} dtype={args.dtype}; fit ms per round (steps through fit() after a "
          f"warm-up fit), sync ms the median of train_on_batch calls; ratio: median fit ÷ {names[0]}'s")
    print(f"{'size':<7}{'model':<16}{'checkout':<12}{'fit ms':>18}{'sync ms':>18}{'ratio':>8}")
    summary = []
    for size in args.size.split(","):
        models = list(dict.fromkeys(r["model"] for r in runs if r["size"] == size))
        for model in models:
            reference = None
            for name in names:
                rows = [r for r in runs if (r["size"], r["model"], r["checkout"]) == (size, model, name)
                        and r["fit_step_seconds"]]
                if not rows:
                    continue
                fit = statistics.median(r["fit_step_seconds"] for r in rows)
                reference = fit if reference is None else reference
                fits = ", ".join(f"{r['fit_step_seconds'] * 1e3:.1f}" for r in rows)
                syncs = ", ".join(f"{r['synchronous_step_seconds'] * 1e3:.1f}" for r in rows)
                summary.append({"size": size, "model": model, "checkout": name,
                                "median_fit_step_seconds": fit, "ratio": fit / reference})
                print(f"{size:<7}{model:<16}{name:<12}{fits:>18}{syncs:>18}{fit / reference:>8.3f}")
    if args.output:
        write(args, checkouts, device, runs, summary)


def write(args, checkouts, device, runs, summary=None):
    with open(args.output, "w") as f:
        json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "machine": platform.node(), "device_kind": device, "backend": "jax",
                   "dtype_policy": args.dtype, "checkouts": [n for n, _ in checkouts],
                   "sizes": args.size, "models": args.only, "rounds": args.rounds,
                   "runs": runs, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
