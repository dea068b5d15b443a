"""Small-scale quality: does the ordering of the paper's Table 1 hold? One run, one table.

Trains Rec:fixed:skip, Slide and XL for the same number of training tokens on the
built-in code corpus (this Python's standard library, one document per file, or with
--data stdlib-directories each directory's files joined into long documents; or a local
PG19 with --data pg19 --data-dir DIR), then reports held-out bits per token with the state
carried from segment to segment and with it cleared at every segment, overall and by
position inside the documents. The recurrent rows log the state's attention scales, gate,
attention entropies and gradient norms as they train (bench/state_probe.py); `--variants`
adds Rec rows with other settings (e.g. the paper's state initialisation). Writes a PNG of
the learning curves (and of each model minus Slide on the same batches) and a JSON under
bench/results/. Needle recall has its own script, bench/needle.py.

Sizes: `tiny` (the tiny presets: 4 layers, D=128, W=64; for 2 CPU cores) and `bytes`
(the byte-level small configuration of bench/speed.py: 6 layers, D=512, W=512, S=512,
T=2048, batch 16; for a GPU). `--pipeline numpy` feeds the lanes from NumPy
(`keras_brt.data.lane_batches`, bytes tokenized in Python) for machines without
TensorFlow; `tf` uses `lane_dataset` as `keras-brt train` does.

    KERAS_BACKEND=tensorflow python bench/quality.py --steps 150
    KERAS_BACKEND=jax python bench/quality.py --size bytes --dtype mixed_bfloat16 --steps 3500 \
        --data directories --data-dir DIR --eval-documents 64 --pipeline numpy  # GPU
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import time

import keras
import numpy as np

import keras_brt
from keras_brt.data import lane_batches, stdlib_source
from keras_brt.models.presets import get_preset
from keras_brt.training import (BitsPerToken, StepLosses, evaluate_bits_per_token, make_eval_step,
                                make_optimizer)
from speed import device_kind  # bench/ is on the path when run as a script
from state_probe import StateProbe

# (label, backbone config or preset name, segment length, tokens per step): equal tokens per
# step for every model (XL trains on window-long segments with a larger batch).
BYTES = dict(vocabulary_size=264, num_layers=6, hidden_dim=512, num_heads=8, head_dim=64,
             intermediate_dim=2048, block_size=512, num_state_vectors=512, attention_scale_init=4.0)
SIZES = {
    "tiny": (("Rec:fixed:skip", "tiny_rec_fixed_skip", 512), ("Slide:4", "tiny_slide", 512),
             ("XL:64", "tiny_xl", 64)),
    "bytes": (("Rec:fixed:skip", dict(BYTES, recurrent_layers=(3,)), 2048),
              ("Slide:6", dict(BYTES, recurrent_layers=()), 2048),
              ("XL:512", dict(BYTES, recurrent_layers=()), 512),
              # Window 2048 with the lanes of Slide and Rec (16 x 2048 tokens per step).
              ("XL:2048", dict(BYTES, block_size=2048, recurrent_layers=()), 2048)),
}


def byte_lanes(source, batch, segment_length, repeat=False, seed=0, documents=None):
    """Lane batches from NumPy: UTF-8 bytes as ids (ByteTokenizer's layout: byte + 3, BOS 1),
    documents reshuffled every pass when repeating."""
    texts = list(source.documents())
    if documents is not None:
        texts = texts[:documents]

    def token_documents():
        rng = np.random.default_rng(seed)
        while True:
            for i in (rng.permutation(len(texts)) if repeat else range(len(texts))):
                yield np.frombuffer(texts[i].encode("utf-8"), np.uint8).astype(np.int32) + 3
            if not repeat:
                return

    return lane_batches(token_documents(), batch, segment_length, bos_id=1)


def source_directories(root, split, held_out_fraction=0.05, max_bytes=128 * 1024, exclude=(), name=None):
    """Every directory of .py files under `root`, its files in name order joined into
    documents of up to `max_bytes` (whole files; a longer file stands alone): documents of
    dozens of segments in which later files use what earlier ones defined. Split by a hash
    of each document's first file, as FolderSource splits by file."""
    from keras_brt.data import FolderSource, IterableSource
    from keras_brt.data.sources import _held_out  # FolderSource's split by a hash of the path

    source = FolderSource(root, pattern="*.py", exclude=exclude)
    directories = {}
    for path in source.files:
        directories.setdefault(os.path.dirname(path), []).append(path)

    def held_out(path):
        return _held_out(os.path.relpath(path, source.path), held_out_fraction)

    def documents():
        for directory in sorted(directories):
            chunks, parts, size = [], [], 0
            for path in directories[directory]:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8", errors="replace")
                if parts and size + len(text) > max_bytes:
                    chunks.append(parts)
                    parts, size = [], 0
                parts.append((path, text))
                size += len(text)
            chunks.append(parts)
            for parts in chunks:
                if parts and held_out(parts[0][0]) == (split == "test"):
                    yield "\n".join(text for _, text in parts)

    return IterableSource(documents, name=f"{name or 'directories:' + root}:{split}")


def stdlib_directories(split):
    """The standard library as `source_directories` documents (the built-in corpus)."""
    return source_directories(stdlib_source(split=None).path, split,
                              exclude=("site-packages/*", "dist-packages/*"), name="stdlib-directories")


def make_model(model, dtype):
    if isinstance(model, str):
        return keras_brt.models.BlockRecurrentTransformerCausalLM.from_preset(
            model, vocabulary_size=264, dtype=dtype)
    backbone = keras_brt.models.BlockRecurrentTransformerBackbone(**model, dtype=dtype)
    return keras_brt.models.BlockRecurrentTransformerCausalLM(backbone)


def train(model, segment_length, batch, steps, train_source, pipeline, dtype, seed=0, callbacks=(),
          optimizer=None):
    """`optimizer`: keyword arguments of `make_optimizer` (default: AdamW's recipe)."""
    keras.utils.set_random_seed(seed)
    lm = make_model(model, dtype)
    lm.compile(optimizer=make_optimizer(steps=steps, **(optimizer or {})), weighted_metrics=[BitsPerToken()],
               jit_compile=True)
    if pipeline == "tf":
        from keras_brt.data import ByteTokenizer, lane_dataset

        dataset = lane_dataset(train_source, ByteTokenizer(), batch, segment_length, repeat=True,
                               shuffle_buffer=1024, seed=seed)
    else:
        dataset = byte_lanes(train_source, batch, segment_length, repeat=True, seed=seed)
    record = StepLosses()
    start = time.perf_counter()
    lm.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[record, *callbacks])
    return lm, record.losses, time.perf_counter() - start


def evaluate(lm, test_source, batch, segment_length, documents):
    """Held-out bits per token from fresh lanes, each document to its end, state carried and cleared."""
    step, report = make_eval_step(lm), {}
    for mode, clear in (("bits_per_token", False), ("bits_per_token_state_cleared", True)):
        lanes = byte_lanes(test_source, batch, segment_length, documents=documents)
        result = evaluate_bits_per_token(lm, lanes, clear_state=clear, step=step)
        report[mode], report["tokens"] = result["bits_per_token"], result["tokens"]
        report[mode + "_by_position"] = by_position_ranges(result)
    return report


POSITION_RANGES = (0, 2048, 8192, 32768)  # token positions inside a document


def by_position_ranges(result):
    """{"[start, end)": bits per token} over POSITION_RANGES of positions inside documents,
    from evaluate_bits_per_token's per-bucket curve."""
    bits, tokens = np.nan_to_num(result["loss_by_position"]), result["tokens_by_position"]
    starts = np.arange(len(tokens)) * result["position_bucket"]
    ranges = {}
    for low, high in zip(POSITION_RANGES, POSITION_RANGES[1:] + (None,)):
        inside = (starts >= low) & (starts < high if high else True)
        if tokens[inside].sum():
            name = f"[{low}, {high if high else 'end'})"
            ranges[name] = {"bits_per_token": float((bits * tokens)[inside].sum() / tokens[inside].sum()),
                            "tokens": int(tokens[inside].sum())}
    return ranges


def plot_curves(curves, path, tokens_per_step, window=50, reference="Slide"):
    """PNG of the training loss in bits per token against training tokens (`window`-step
    means), and of each model's difference to the `reference` model (the first label that
    starts with it) over `4 * window`-step means. The runs read less than one pass over their
    corpus, so every training batch is new text: the curves estimate held-out loss as
    training goes. Every model reads the same batches, so the differences are free of the
    batches' own ups and downs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smooth(values, n):
        n = min(n, len(values))
        return np.convolve(values, np.ones(n) / n, mode="valid") / np.log(2), n

    # The curve to subtract from the others; none when it would be the only curve.
    base = None if len(curves) == 1 else next(
        (np.asarray(v) for k, v in curves.items() if k.startswith(reference)), None)
    figure, axes = plt.subplots(1, 1 if base is None else 2, figsize=(7 if base is None else 13, 4),
                                squeeze=False)
    final = []
    for label, losses in curves.items():
        values, n = smooth(losses, window)
        (line,) = axes[0, 0].plot((np.arange(len(values)) + n) * tokens_per_step / 1e6, values,
                                  label=label)
        final.append(values[-1])
        if base is not None and not label.startswith(reference):
            steps = min(len(losses), len(base))
            diff, n = smooth(np.asarray(losses[:steps]) - base[:steps], 4 * window)
            axes[0, 1].plot((np.arange(len(diff)) + n) * tokens_per_step / 1e6, diff, label=label,
                            color=line.get_color())
    axes[0, 0].set_ylim(min(final) - 0.15, max(final) + 0.6)
    axes[0, 0].set_xlabel("training tokens (millions)")
    axes[0, 0].set_ylabel(f"training bits per token ({window}-step mean)")
    axes[0, 0].legend()
    if base is not None:
        axes[0, 1].axhline(0.0, color="grey", linewidth=0.8)
        axes[0, 1].set_ylim(-0.1, 0.1)  # the early steps differ by far more
        axes[0, 1].set_xlabel("training tokens (millions)")
        axes[0, 1].set_ylabel(f"minus {reference} on the same batches ({4 * window}-step mean)")
        axes[0, 1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--tokens-per-step", type=int, default=None,
                        help="default: 8 x 512 (tiny), 16 x 2048 (bytes)")
    parser.add_argument("--dtype", default="float32", help="dtype policy, e.g. mixed_bfloat16")
    parser.add_argument("--pipeline", choices=("tf", "numpy"), default=None,
                        help="default: tf where TensorFlow is installed, else numpy")
    parser.add_argument("--data", default="stdlib",
                        help="stdlib (one document per file), stdlib-directories (a directory's files "
                             "joined into documents of up to 128 KiB), directories (the same for every "
                             "directory of .py files under --data-dir), or a name for keras-brt's --data")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--eval-documents", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="initialisation and document order")
    parser.add_argument("--models", default=None,
                        help="comma-separated labels to train (default: all; `none` with --variants: "
                             "only the variants)")
    parser.add_argument("--variants", default=None,
                        help='JSON {"label": {backbone overrides}}: more rows, each the first model '
                             '(Rec) with those overrides, e.g. the paper\'s initialisation; '
                             '"segment_length" sets the row\'s segment (its batch is tokens per step / '
                             'segment), "recurrent_layers": [] makes it a Slide row, "optimizer" holds '
                             'make_optimizer\'s arguments (e.g. {"state_learning_rate_multiplier": 10} '
                             'or {"name": "adafactor"})')
    parser.add_argument("--probe-every", type=int, default=250,
                        help="log the state's scales and gate every N steps (bench/state_probe.py)")
    parser.add_argument("--deep-probe-every", type=int, default=1000,
                        help="also attention entropy and gradient norms every N steps (JAX)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="instead of training: one table, JSON (--output) and PNG from the rows of "
                             "several runs of the same settings, e.g. models trained in parallel processes")
    parser.add_argument("--note", default=None, help="a sentence stored in the JSON (how the run was made)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.output, args.note)
    pipeline = args.pipeline or ("tf" if importlib.util.find_spec("tensorflow") else "numpy")
    tokens_per_step = args.tokens_per_step or (8 * 512 if args.size == "tiny" else 16 * 2048)

    if args.data == "stdlib":
        train_source, test_source = stdlib_source("train"), stdlib_source("test")
    elif args.data == "stdlib-directories":
        train_source, test_source = stdlib_directories("train"), stdlib_directories("test")
    elif args.data == "directories":
        if not args.data_dir:
            raise ValueError("`--data directories` needs `--data-dir`, the folder to read. Received: --data-dir=None")
        train_source = source_directories(args.data_dir, "train")
        test_source = source_directories(args.data_dir, "test")
    else:
        from keras_brt.training import resolve_data

        train_source, test_source = resolve_data(args.data, args.data_dir, "*.txt", None)
    rows, curves = [], {}
    names = args.models.split(",") if args.models else None
    models = [(*m, None) for m in SIZES[args.size] if names is None or m[0] in names]
    if not models and not (args.variants and names == ["none"]):
        raise ValueError(f"`--models` names none of {[m[0] for m in SIZES[args.size]]}. "
                         f"Received: --models={args.models}")
    if args.variants:
        _, rec_model, rec_segment = SIZES[args.size][0]
        for label, overrides in json.loads(args.variants).items():
            base = dict(get_preset(rec_model)["config"]) if isinstance(rec_model, str) else rec_model
            segment = overrides.pop("segment_length", rec_segment)
            optimizer = overrides.pop("optimizer", None)  # make_optimizer's arguments
            models.append((label, {**base, **overrides}, segment, optimizer))

    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    stem = f"quality_{args.data}_{keras.backend.backend()}" + ("" if args.size == "tiny" else f"_{args.size}")
    output = args.output or os.path.join(results, stem + ".json")
    header = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.node(), "devices": [str(d) for d in keras.distribution.list_devices()],
        "device_kind": device_kind(),
        "backend": keras.backend.backend(), "keras": keras.__version__,
        "size": args.size, "dtype_policy": args.dtype, "pipeline": pipeline,
        "steps": args.steps, "tokens_per_step": tokens_per_step, "data": args.data,
        "eval_documents": args.eval_documents, "seed": args.seed,
        **({"note": args.note} if args.note else {}),
    }
    probe_batch = next(iter(byte_lanes(test_source, 4, 2048)))
    probe_batch = (probe_batch[0]["token_ids"], probe_batch[1], probe_batch[2])
    rows, curves = [], {}
    for label, model, segment, optimizer in models:
        batch = tokens_per_step // segment
        probe = StateProbe(args.probe_every, probe_batch, args.deep_probe_every)
        lm, losses, seconds = train(model, segment, batch, args.steps, train_source, pipeline, args.dtype,
                                    args.seed, callbacks=[probe], optimizer=optimizer)
        report = evaluate(lm, test_source, batch, segment, args.eval_documents)
        curves[label] = losses
        rows.append({"model": label, "config": model, "optimizer": optimizer or {"name": "adamw"},
                     "segment_length": segment, "batch": batch,
                     "train_seconds": seconds, "final_train_loss": float(np.mean(losses[-10:])),
                     **report, "state_probe": probe.rows})
        print(f"trained {label}: held-out {report['bits_per_token']:.4f} bits/token "
              f"({report['bits_per_token_state_cleared']:.4f} with the state cleared), "
              f"{seconds:.0f} s", flush=True)
        for row in probe.rows[-1:]:
            print("  state path at the end: " + json.dumps(
                {k: round(v, 3) for k, v in row.items() if isinstance(v, float)}), flush=True)
        with open(output, "w") as f:  # after every model, so that a cut-short run keeps its rows
            json.dump({**header, "rows": rows, "learning_curves": curves}, f, indent=2)

    print(f"\nbackend={keras.backend.backend()}, size={args.size}, dtype={args.dtype}, {args.steps} steps "
          f"of {tokens_per_step} tokens, bytes, held-out: {args.eval_documents} documents of {test_source.name}")
    print(table(rows))
    plot_curves(curves, os.path.splitext(output)[0] + ".png", tokens_per_step)
    print(f"wrote {output}")


MERGE_KEYS = ("size", "dtype_policy", "steps", "tokens_per_step", "data", "eval_documents", "seed",
              "backend", "device_kind")


def merge(paths, output, note=None):
    """Writes one JSON, table and PNG from several quality JSON files whose settings match."""
    if not output:
        raise ValueError("`--merge` needs `--output`, the merged JSON to write. Received: --output=None")
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    first = runs[0]
    for path, run in zip(paths[1:], runs[1:]):
        differ = {k: (first.get(k), run.get(k)) for k in MERGE_KEYS if first.get(k) != run.get(k)}
        if differ:
            raise ValueError(f"`--merge` takes runs of the same settings; {path} differs from {paths[0]} "
                             f"in {differ}")
    rows = [row for run in runs for row in run["rows"]]
    curves = {label: c for run in runs for label, c in run["learning_curves"].items()}
    merged = {**{k: v for k, v in first.items() if k not in ("rows", "learning_curves")},
              "merged_from": [os.path.basename(p) for p in paths], **({"note": note} if note else {}),
              "rows": rows, "learning_curves": curves}
    with open(output, "w") as f:
        json.dump(merged, f, indent=2)
    print(table(rows))
    plot_curves(curves, os.path.splitext(output)[0] + ".png", first["tokens_per_step"])
    print(f"wrote {output}")


def table(rows):
    """The quality table: bits per byte carried / cleared, the state's worth, by position."""
    lines = [f"{'model':<20}{'bits/byte carried':>19}{'cleared':>10}{'state worth':>13}{'train':>9}"]
    for r in rows:
        lines.append(f"{r['model']:<20}{r['bits_per_token']:>19.4f}{r['bits_per_token_state_cleared']:>10.4f}"
                     f"{r['bits_per_token_state_cleared'] - r['bits_per_token']:>13.4f}"
                     f"{r['final_train_loss'] / np.log(2):>9.4f}")
    lines.append("\nheld-out bits/byte by position inside the documents (state carried / cleared)")
    names = list(rows[0]["bits_per_token_by_position"])
    lines.append(f"{'model':<20}" + "".join(f"{name:>22}" for name in names))
    for r in rows:
        carried, cleared = r["bits_per_token_by_position"], r["bits_per_token_state_cleared_by_position"]
        lines.append(f"{r['model']:<20}" + "".join(
            f"{carried[n]['bits_per_token']:>13.4f} / {cleared[n]['bits_per_token']:.4f}" for n in names))
    lines.append(f"{'tokens':<20}" + "".join(
        f"{rows[0]['bits_per_token_by_position'][n]['tokens']:>22}" for n in names))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
