"""`keras-brt`: train and evaluate Block-Recurrent Transformers on long documents.

    keras-brt train                      # tiny model, built-in corpus, a few CPU minutes
    keras-brt evaluate RUN_DIR [--json]  # held-out bits per token, state carried vs cleared
"""

import argparse
import itertools
import json
import os
import sys
import time

RUN_FORMAT = 1  # Version of the run-directory layout; bumped on incompatible changes.


def _data_sources(data, pattern):
    """(train, held-out) document sources for `--data`."""
    from keras_brt import data as brt_data

    if data == "stdlib":
        return brt_data.stdlib_source("train"), brt_data.stdlib_source("test")
    if os.path.isdir(data):
        return (
            brt_data.FolderSource(data, pattern=pattern, split="train"),
            brt_data.FolderSource(data, pattern=pattern, split="test"),
        )
    raise ValueError(
        "`--data` must be 'stdlib' (the built-in corpus) or an existing folder of text files. "
        f"Received: --data={data!r}"
    )


def _first_documents(source, count):
    from keras_brt.data import IterableSource

    if not count:
        return source
    return IterableSource(lambda: itertools.islice(source.documents(), count), name=source.name)


def _evaluate(lm, tokenizer, source, batch_size, segment_length, documents):
    from keras_brt.data import lane_dataset
    from keras_brt.training import evaluate_bits_per_token

    source = _first_documents(source, documents)
    results = {}
    for mode, clear in (("carried", False), ("cleared", True)):
        dataset = lane_dataset(source, tokenizer, batch_size, segment_length).as_numpy_iterator()
        results[mode] = evaluate_bits_per_token(lm, dataset, clear_state=clear)
    return results


def _report(results, vocabulary_size):
    carried, cleared = results["carried"], results["cleared"]
    return {
        "bits_per_token": carried["bits_per_token"],
        "bits_per_token_state_cleared": cleared["bits_per_token"],
        "tokens": carried["tokens"],
        "vocabulary_size": vocabulary_size,
    }


def train(args):
    import keras

    import keras_brt
    from keras_brt.data import ByteTokenizer, lane_dataset
    from keras_brt.training import BitsPerToken

    if args.batch_size < 1:
        raise ValueError(f"`--batch-size` must be at least 1. Received: --batch-size={args.batch_size}")
    if args.steps < 1:
        raise ValueError(f"`--steps` must be at least 1. Received: --steps={args.steps}")
    keras.utils.set_random_seed(args.seed)
    train_source, test_source = _data_sources(args.data, args.pattern)
    tokenizer = ByteTokenizer()
    overrides = {"vocabulary_size": max(264, -(-tokenizer.vocabulary_size // 8) * 8)}
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM.from_preset(args.preset, **overrides)
    block = lm.backbone.block_size
    if args.segment_length % block:
        raise ValueError(
            f"`--segment-length` must be a multiple of the block size {block} of preset "
            f"{args.preset!r}. Received: --segment-length={args.segment_length}"
        )
    lm.compile(
        optimizer=keras.optimizers.AdamW(args.learning_rate, weight_decay=0.01, global_clipnorm=1.0),
        weighted_metrics=[BitsPerToken()],
        jit_compile=True,
    )
    dataset = lane_dataset(
        train_source, tokenizer, args.batch_size, args.segment_length,
        repeat=True, shuffle_buffer=1024, seed=args.seed,
    )
    os.makedirs(args.output, exist_ok=True)
    print(
        f"Training {args.preset} on "
        f"{train_source.name}: {args.steps} steps of {args.batch_size} lanes x "
        f"{args.segment_length} tokens, backend {keras.backend.backend()}",
        flush=True,
    )
    start = time.time()
    lm.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=1 if sys.stdout.isatty() else 2)
    lm.save(os.path.join(args.output, "model.keras"))
    run = {
        "format": RUN_FORMAT,
        "keras_brt_version": keras_brt.__version__,
        "preset": args.preset,
        "tokenizer": "bytes",
        "data": args.data,
        "pattern": args.pattern,
        "batch_size": args.batch_size,
        "segment_length": args.segment_length,
        "steps": args.steps,
        "train_seconds": round(time.time() - start, 1),
    }
    with open(os.path.join(args.output, "run.json"), "w") as f:
        json.dump(run, f, indent=2)
    results = _evaluate(lm, tokenizer, test_source, args.batch_size, args.segment_length,
                        args.eval_documents)
    report = _report(results, lm.backbone.vocabulary_size)
    with open(os.path.join(args.output, "evaluation.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(
        f"held-out bits per token: {report['bits_per_token']:.4f} with the state carried, "
        f"{report['bits_per_token_state_cleared']:.4f} with it cleared at every segment "
        f"({report['tokens']} tokens of {test_source.name}); run saved in {args.output}"
    )
    return report


def _load_run(run_dir):
    import keras

    import keras_brt  # noqa: F401  (registers the serializable classes)

    path = os.path.join(run_dir, "run.json")
    if not os.path.isfile(path):
        raise ValueError(f"`RUN_DIR` must be a directory written by `keras-brt train`. Received: {run_dir!r}")
    with open(path) as f:
        run = json.load(f)
    if run.get("format") != RUN_FORMAT:
        raise ValueError(
            f"The run directory was written by an incompatible keras_brt version "
            f"({run.get('keras_brt_version')!r}, format {run.get('format')!r}; this version reads "
            f"format {RUN_FORMAT}). Received: {run_dir!r}"
        )
    lm = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    return run, lm


def evaluate(args):
    from keras_brt.data import ByteTokenizer

    run, lm = _load_run(args.run_dir)
    _, test_source = _data_sources(args.data or run["data"], args.pattern or run["pattern"])
    results = _evaluate(lm, ByteTokenizer(), test_source, run["batch_size"], run["segment_length"],
                        args.eval_documents)
    report = _report(results, lm.backbone.vocabulary_size)
    print(
        f"held-out bits per token: {report['bits_per_token']:.4f} carried, "
        f"{report['bits_per_token_state_cleared']:.4f} cleared ({report['tokens']} tokens)"
    )
    if args.json:
        print(json.dumps(report))
    return report


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-brt", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train a model (defaults: tiny preset, built-in corpus)")
    p.add_argument("--data", default="stdlib",
                   help="'stdlib' (the Python standard library sources) or a folder of text files")
    p.add_argument("--pattern", default="*.txt", help="file-name pattern inside a --data folder")
    p.add_argument("--preset", default="tiny_rec_fixed_skip")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8, help="lanes (document streams) per step")
    p.add_argument("--segment-length", type=int, default=512, help="tokens per lane per step")
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--eval-documents", type=int, default=12,
                   help="held-out documents to evaluate, each to its end (0: all)")
    p.add_argument("--output", default=os.path.join("runs", "latest"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=train)

    p = commands.add_parser("evaluate", help="held-out bits per token of a trained run")
    p.add_argument("run_dir")
    p.add_argument("--data", default=None, help="default: the data the run was trained on")
    p.add_argument("--pattern", default=None)
    p.add_argument("--eval-documents", type=int, default=12)
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    p.set_defaults(func=evaluate)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as error:
        print(f"keras-brt {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
