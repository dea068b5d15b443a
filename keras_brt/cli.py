"""`keras-brt`: train, evaluate, generate with and export Block-Recurrent Transformers.

    keras-brt train                      # tiny model, built-in corpus, a few CPU minutes
    keras-brt train --data pg19 --data-dir ~/tensorflow_datasets --tokenizer sentencepiece
    keras-brt evaluate RUN_DIR [--json]  # held-out bits per token, state carried vs cleared
    keras-brt generate RUN_DIR --prompt TEXT --max-length N
    keras-brt export RUN_DIR OUT_DIR     # SavedModel for TF Serving in OUT_DIR/1
"""

import argparse
import itertools
import json
import os
import sys
import time
import warnings

import keras

# Settings that must not change when a run is resumed.
RESUME_KEYS = ("data", "data_dir", "pattern", "text_feature", "preset", "tokenizer", "vocabulary_size",
               "batch_size", "segment_length", "optimizer", "learning_rate", "warmup_steps",
               "dropout", "seed", "dtype_policy", "encoding", "held_out_fraction")
# For runs written before the setting existed.
RESUME_DEFAULTS = {"dtype_policy": "float32", "encoding": "utf-8", "held_out_fraction": 0.05}


# === Data ===


def resolve_data(data, data_dir=None, pattern="*.txt", text_feature=None, encoding="utf-8",
                 held_out_fraction=0.05, eval_data=None, held_out=True):
    """`(train source, held-out source)` for `--data`: 'stdlib', a folder, or a TFDS name.

    `eval_data` is a folder evaluated whole instead of a held-out split of `data`;
    `held_out=False` (no evaluation) builds no held-out source (None).
    """
    from keras_brt import data as brt_data

    if not 0 < held_out_fraction < 1:
        raise ValueError("`--held-out-fraction` must lie strictly between 0 and 1. Received: "
                         f"--held-out-fraction={held_out_fraction}")
    if eval_data is not None and not os.path.isdir(eval_data):
        raise ValueError(f"`--eval-data` must be an existing folder. Received: --eval-data={eval_data!r}")
    if data == "stdlib":
        train = brt_data.stdlib_source("train", held_out_fraction)
        test = brt_data.stdlib_source("test", held_out_fraction) if held_out and not eval_data else None
    elif os.path.isdir(data):
        # With a separate evaluation folder, every file of --data is trained on, whole.
        train = brt_data.FolderSource(data, pattern=pattern, split=None if eval_data else "train",
                                      encoding=encoding, held_out_fraction=held_out_fraction)
        test = None
        if held_out and not eval_data:
            test = brt_data.FolderSource(data, pattern=pattern, split="test", encoding=encoding,
                                         held_out_fraction=held_out_fraction)
    elif os.sep in data or data.startswith(".") or os.path.splitext(data)[1] in (".txt", ".py"):
        raise ValueError(f"`--data` is not an existing folder. Received: --data={data!r}")
    else:
        if os.path.exists(data):
            raise ValueError(f"`--data` must be a folder, 'stdlib' or a TFDS name. Received: --data={data!r}")
        try:
            train = brt_data.TFDSSource(data, split="train", data_dir=data_dir, feature=text_feature)
        except ValueError as error:
            raise ValueError(
                f"`--data` names no folder here ({os.path.abspath(data)!r} does not exist), and no "
                f"prepared TFDS dataset of that name was found either: {error}"
            ) from None
        test = None
        if held_out and not eval_data:
            test = brt_data.TFDSSource(data, split=brt_data.TFDSSource.held_out_split(data, data_dir),
                                       data_dir=data_dir, feature=text_feature)
    if held_out and eval_data:
        test = brt_data.FolderSource(eval_data, pattern=pattern, encoding=encoding)
    return train, test


def describe_held_out(source):
    """One line on where held-out data comes from."""
    describe = getattr(source, "describe_split", None)
    return f"held-out data: {describe() if describe else source.name}"


def report_encoding(source, label):
    """A line on files with undecodable bytes or skipped as not text, if there were any."""
    stats = getattr(source, "stats", None) or {}
    notes = []
    if stats.get("files_with_encoding_errors"):
        notes.append(f"{stats['files_with_encoding_errors']} file(s) had bytes that are not valid "
                     f"{source.encoding} (replaced by U+FFFD; give the right --encoding)")
    if stats.get("skipped_not_text"):
        notes.append(f"{stats['skipped_not_text']} file(s) skipped as not text")
    if notes:
        print(f"{label}: " + "; ".join(notes), flush=True)


class _CountingSource:
    """Wraps a source: yields its first `limit` documents and counts their UTF-8 bytes."""

    def __init__(self, source, limit=0):
        self.source, self.limit, self.bytes = source, limit, 0
        self.name = source.name

    def documents(self):
        self.bytes = 0
        docs = self.source.documents()
        for text in itertools.islice(docs, self.limit) if self.limit else docs:
            # The bytes read from disk where the source knows them (any encoding), else UTF-8.
            size = getattr(self.source, "last_document_bytes", None)
            self.bytes += size if size is not None else len(text.encode("utf-8"))
            yield text


def evaluate_run(lm, tokenizer, source, batch_size, segment_length, documents):
    """Held-out evaluation from fresh lanes, each document to its end, state carried and cleared."""
    from keras_brt.data import lane_dataset
    from keras_brt.training import evaluate_bits_per_token, make_eval_step

    counted = _CountingSource(source, documents)
    results, step = {}, make_eval_step(lm)
    for mode, clear in (("carried", False), ("cleared", True)):
        dataset = lane_dataset(counted, tokenizer, batch_size, segment_length).as_numpy_iterator()
        progress = _EvaluationProgress(f"evaluating held-out data, state {mode}")
        results[mode] = evaluate_bits_per_token(lm, dataset, clear_state=clear, step=step,
                                                progress=progress)
        progress.done()
    report_encoding(source, "held-out data")
    carried, cleared = results["carried"], results["cleared"]
    bits = carried["bits_per_token"] * carried["tokens"]
    report = {
        "bits_per_token": carried["bits_per_token"],
        "bits_per_token_state_cleared": cleared["bits_per_token"],
        "bits_per_byte": bits / counted.bytes,
        "bits_per_byte_state_cleared": cleared["bits_per_token"] * cleared["tokens"] / counted.bytes,
        "tokens": carried["tokens"],
        "bytes": counted.bytes,
        "vocabulary_size": lm.backbone.vocabulary_size,
        "data": source.name,
    }
    return report, results


class _EvaluationProgress:
    """Prints the documents and tokens evaluated so far, at most every `every` seconds."""

    def __init__(self, label, every=10.0):
        self.label, self.every = label, every
        self.start = self.last = time.time()
        self.counts = (0, 0, 0)
        print(f"{self.label}...", flush=True)

    def __call__(self, batches, documents, tokens):
        self.counts = (batches, documents, tokens)
        if time.time() - self.last >= self.every:
            self.last = time.time()
            self._print()

    def _print(self):
        batches, documents, tokens = self.counts
        print(f"  {documents} documents, {tokens} tokens ({batches} batches, "
              f"{time.time() - self.start:.0f} s)", flush=True)

    def done(self):
        self._print()


def _print_report(report):
    print(
        f"held-out bits per token: {report['bits_per_token']:.4f} with the state carried, "
        f"{report['bits_per_token_state_cleared']:.4f} with it cleared at every segment "
        f"(bits per byte {report['bits_per_byte']:.4f} / {report['bits_per_byte_state_cleared']:.4f}; "
        f"{report['tokens']} tokens of {report['data']})",
        flush=True,
    )


# === train ===


class ProgressLog(keras.callbacks.Callback):
    """One line every `every` steps, for output that is not a terminal."""

    def __init__(self, every, total):
        super().__init__()
        self.every, self.total = every, total
        self.start, self.first = time.time(), None

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.first = step - 1 if self.first is None else self.first
        if step % self.every == 0 or step == self.total:
            rate = (step - self.first) / max(time.time() - self.start, 1e-9)
            metrics = " ".join(f"{k}={float(v):.4f}" for k, v in (logs or {}).items())
            print(f"step {step}/{self.total} {metrics} ({rate:.2f} steps/s)", flush=True)


def _settings(args, vocabulary_size):
    import keras_brt

    return {
        "format": None,  # filled by the caller with RUN_FORMAT
        "keras_brt_version": keras_brt.__version__,
        "data": args.data, "data_dir": args.data_dir, "pattern": args.pattern,
        "text_feature": args.text_feature, "encoding": args.encoding,
        "held_out_fraction": args.held_out_fraction, "eval_data": args.eval_data,
        "preset": args.preset, "tokenizer": args.tokenizer, "vocabulary_size": vocabulary_size,
        "batch_size": args.batch_size, "segment_length": args.segment_length,
        "optimizer": args.optimizer, "learning_rate": args.learning_rate,
        "warmup_steps": args.warmup_steps, "dropout": args.dropout, "seed": args.seed,
        "steps": args.steps, "checkpoint_every": args.checkpoint_every,
        "strategy": args.strategy, "dtype_policy": args.dtype_policy,
    }


def _check_train_args(args):
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--steps", args.steps, 1),
                             ("--segment-length", args.segment_length, 1),
                             ("--checkpoint-every", args.checkpoint_every, 1)):
        if value < low:
            raise ValueError(f"`{flag}` must be at least {low}. Received: {flag}={value}")
    if args.strategy == "multi_worker":
        raise ValueError(
            "`keras-brt train` runs in one process; train on several hosts from Python with "
            "keras_brt.distribute (see the README's multi-host recipe). Received: "
            "--strategy='multi_worker'"
        )
    if args.strategy != "none" and keras.backend.backend() != "tensorflow":
        raise ValueError(
            "`--strategy` uses tf.distribute: run with KERAS_BACKEND=tensorflow. Received: "
            f"--strategy={args.strategy!r} with backend={keras.backend.backend()!r}"
        )
    if args.dtype_policy not in ("float32", "mixed_bfloat16", "mixed_float16", "bfloat16"):
        raise ValueError(
            "`--dtype-policy` must be float32, mixed_bfloat16, mixed_float16 or bfloat16. "
            f"Received: --dtype-policy={args.dtype_policy!r}"
        )


def _scope(strategy):
    from keras_brt.distribute import strategy_scope

    return strategy_scope(strategy)


def train(args):
    import keras_brt
    from keras_brt.data import ByteTokenizer, SentencePieceTokenizer, lane_dataset, train_sentencepiece
    from keras_brt.training import BitsPerToken, RunCheckpoint, StepHistory, load_checkpoint, load_tokenizer
    from keras_brt.training import make_optimizer, runs

    _check_train_args(args)
    output = args.output
    if os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"`--output` must be a run directory, not a file. Received: --output={output!r}")
    resuming = os.path.isfile(os.path.join(output, "run.json"))
    if args.resume and not resuming:
        raise ValueError(
            "`--resume` continues the run in --output, and there is none: "
            + ("the directory does not exist" if not os.path.isdir(output) else "it holds no run.json")
            + f". Received: --output={output!r}"
        )
    if resuming and not args.resume:
        raise ValueError(
            f"`--output` already holds a run; pass --resume to continue it, or choose another "
            f"--output (nothing is overwritten). Received: --output={output!r}"
        )
    train_source, test_source = resolve_data(
        args.data, args.data_dir, args.pattern, args.text_feature, args.encoding,
        args.held_out_fraction, args.eval_data, held_out=not args.no_evaluation)
    if test_source is not None:
        print(describe_held_out(test_source), flush=True)
    strategy = None
    if args.strategy != "none":
        from keras_brt import distribute

        strategy = distribute.get_strategy(args.strategy, tpu=args.tpu)
        distribute.per_replica_batch_size(args.batch_size, strategy)
    preset = keras_brt.models.PRESETS.get(args.preset)
    if preset is None:
        raise ValueError(
            f"Unknown preset. Available: {sorted(keras_brt.models.PRESETS)}. "
            f"Received: --preset={args.preset!r}"
        )
    block = preset["config"]["block_size"]
    if args.segment_length % block:
        raise ValueError(
            f"`--segment-length` must be a multiple of the block size {block} of preset "
            f"{args.preset!r}. Received: --segment-length={args.segment_length}"
        )
    keras.utils.set_random_seed(args.seed)

    lm = None
    if resuming:
        run = runs.read_run(output)
        tokenizer = load_tokenizer(output)
        changed = {k: (run.get(k), v) for k, v in _settings(args, run.get("vocabulary_size")).items()
                   if k in RESUME_KEYS and run.get(k, RESUME_DEFAULTS.get(k)) != v}
        if changed:
            raise ValueError(
                "--resume continues a run with its own settings; these differ (run, command): "
                f"{changed}. Received: --output={output!r}"
            )
        checkpoint = os.path.join(output, runs.CHECKPOINT)
        if os.path.exists(checkpoint):
            with _scope(strategy):
                lm = load_checkpoint(checkpoint)
    else:
        os.makedirs(output, exist_ok=True)
        if args.tokenizer == "sentencepiece":
            print(f"Training a SentencePiece model ({args.vocabulary_size} pieces) on {train_source.name}",
                  flush=True)
            docs = itertools.islice(train_source.documents(), 2000)
            tokenizer = SentencePieceTokenizer(train_sentencepiece(docs, args.vocabulary_size))
        else:
            tokenizer = ByteTokenizer()
        runs.save_tokenizer(tokenizer, output)
        run = _settings(args, -(-tokenizer.vocabulary_size // 8) * 8)
        run["format"] = runs.RUN_FORMAT
        runs.write_json(os.path.join(output, "run.json"), run)

    if lm is None:
        overrides = {"vocabulary_size": run["vocabulary_size"], "dtype": args.dtype_policy}
        if args.dropout is not None:
            overrides["dropout"] = args.dropout
        with _scope(strategy):
            lm = keras_brt.models.BlockRecurrentTransformerCausalLM.from_preset(args.preset, **overrides)
            lm.compile(
                optimizer=make_optimizer(args.optimizer, args.steps, args.learning_rate,
                                         args.warmup_steps, clip_norm=args.clip_norm),
                weighted_metrics=[BitsPerToken()],
                jit_compile=True,  # XLA per replica under a multi-replica strategy too
            )
            lm.build({"token_ids": (args.batch_size, args.segment_length)})
    start_step = int(lm.optimizer.iterations.numpy())
    remaining = args.steps - start_step
    print(
        f"{'Resuming' if start_step else 'Training'} {args.preset} on {train_source.name} "
        f"(backend {keras.backend.backend()}): step {start_step} of {args.steps}, "
        f"{args.batch_size} lanes x {args.segment_length} tokens, {args.tokenizer} tokenizer "
        f"({run['vocabulary_size']} ids), {args.dtype_policy}"
        + ("" if strategy is None else f", {type(strategy).__name__} x{strategy.num_replicas_in_sync}"),
        flush=True,
    )
    if remaining > 0:
        dataset = lane_dataset(
            train_source, tokenizer, args.batch_size, args.segment_length,
            repeat=True, shuffle_buffer=1024, seed=args.seed,
        ).skip(start_step)  # The lane stream is deterministic: skip what was trained on.
        checkpoints = RunCheckpoint(output, args.checkpoint_every)
        callbacks = [  # the history row of a step is written before its checkpoint
            StepHistory(os.path.join(output, "history.csv"), args.log_every),
            checkpoints,
            keras.callbacks.TensorBoard(os.path.join(output, "logs"), update_freq=args.log_every),
        ]
        interactive = sys.stdout.isatty()
        if not interactive:
            callbacks.append(ProgressLog(args.log_every, args.steps))
        lm.fit(dataset, steps_per_epoch=remaining, epochs=1, callbacks=callbacks,
               verbose=1 if interactive else 0)
        checkpoints.set_model(lm)
        checkpoints.save()
    lm.save(os.path.join(output, "model.keras"))
    report_encoding(train_source, "training data")
    if args.no_evaluation:
        print(f"run saved in {output} (held-out evaluation skipped: keras-brt evaluate {output})")
        return None
    report, results = evaluate_run(lm, tokenizer, test_source, args.batch_size, args.segment_length,
                                   args.eval_documents)
    runs.write_json(os.path.join(output, "evaluation.json"), report)
    runs.plot_loss_by_position(results, os.path.join(output, "loss_by_position.png"),
                               f"{args.preset} on {test_source.name}")
    _print_report(report)
    print(f"run saved in {output}")
    return report


# === evaluate ===


def _run_model_path(run_dir):
    """The final model of a run, or its last checkpoint when training has not ended."""
    from keras_brt.training import runs

    model_path = os.path.join(run_dir, "model.keras")
    if not os.path.exists(model_path):
        model_path = os.path.join(run_dir, runs.CHECKPOINT)
    if not os.path.exists(model_path):
        raise ValueError(f"The run directory holds no model yet. Received: run_dir={run_dir!r}")
    return model_path


def evaluate(args):
    from keras_brt.training import load_checkpoint, load_tokenizer, runs

    run = runs.read_run(args.run_dir)
    lm = load_checkpoint(_run_model_path(args.run_dir))
    tokenizer = load_tokenizer(args.run_dir)
    data = args.data or run["data"]
    _, test_source = resolve_data(
        data, args.data_dir or run.get("data_dir"), args.pattern or run.get("pattern", "*.txt"),
        args.text_feature or run.get("text_feature"), args.encoding or run.get("encoding", "utf-8"),
        args.held_out_fraction or run.get("held_out_fraction", 0.05),
        args.eval_data or (None if args.data else run.get("eval_data")))
    print(describe_held_out(test_source), flush=True)
    report, results = evaluate_run(lm, tokenizer, test_source, run["batch_size"],
                                   run["segment_length"], args.eval_documents)
    plot = args.plot or os.path.join(args.run_dir, "evaluation_loss_by_position.png")
    runs.plot_loss_by_position(results, plot, f"{run['preset']} on {test_source.name}")
    _print_report(report)
    print(f"plot written to {plot}")
    if args.json:
        print(json.dumps(report))
    return report


# === generate ===


def _read_prompt_file(path, encoding):
    if not os.path.isfile(path):
        raise ValueError(f"`--prompt-file` names no file. Received: --prompt-file={path!r}")
    try:
        with open(path, encoding=encoding) as f:
            return f.read()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"`--prompt-file` is not {encoding} text ({error.reason} at byte {error.start}); give its "
            f"encoding with --encoding, e.g. --encoding latin-1. Received: --prompt-file={path!r}"
        ) from None


def generate(args):
    from keras_brt.models import get_sampler
    from keras_brt.models.samplers import SAMPLERS
    from keras_brt.training import load_checkpoint, load_tokenizer, runs

    # Every argument is checked before the model is loaded.
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"`--max-new-tokens` must be at least 1. Received: --max-new-tokens={args.max_new_tokens}")
    prompt = args.prompt
    if args.prompt_file:
        prompt = _read_prompt_file(args.prompt_file, args.encoding)
    if prompt is None:
        raise ValueError("Give --prompt TEXT or --prompt-file PATH. Received: neither")
    runs.read_run(args.run_dir)
    lm = load_checkpoint(_run_model_path(args.run_dir))
    tokenizer = load_tokenizer(args.run_dir)
    options = {"temperature": args.temperature}
    if args.sampler == "top_k":
        options["k"] = args.top_k
    elif args.sampler == "top_p":
        options["p"] = args.top_p
    sampler = SAMPLERS[args.sampler](**options) if args.sampler in SAMPLERS else get_sampler(args.sampler)
    max_length = args.max_length
    if args.max_new_tokens is not None:
        max_length = 1 + len(tokenizer(prompt)) + args.max_new_tokens
    text = lm.generate(prompt, max_length=max_length, sampler=sampler, tokenizer=tokenizer,
                       stop_token_ids="auto", strip_prompt=args.strip_prompt, seed=args.seed)
    print(text)
    return text


# === export ===


def export(args):
    from keras_brt.export import export_saved_model
    from keras_brt.training import load_checkpoint, load_tokenizer, runs

    runs.read_run(args.run_dir)
    lm = load_checkpoint(_run_model_path(args.run_dir))
    tokenizer = None if args.no_text_signature else load_tokenizer(args.run_dir)
    target = export_saved_model(lm, args.out_dir, version=args.version, scores=args.scores,
                                tokenizer=tokenizer, overwrite=args.overwrite)
    names = sorted(lm.backbone.state_shapes(None))
    print(f"SavedModel written to {target}")
    print("signatures: serving_default, initial_state, step"
          + ("" if tokenizer is None else ", score_text, tokenize"))
    print(f"state tensors ({len(names)}): {', '.join(names)}")
    base = os.path.abspath(args.out_dir)
    print(f"serve it: tensorflow_model_server --rest_api_port=8501 --model_name=brt "
          f"--model_base_path={base}")
    return target


# === Command line ===


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-brt", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train a model (defaults: tiny preset, built-in corpus)")
    p.add_argument("--data", default="stdlib",
                   help="'stdlib' (this Python's standard library sources, the default corpus), a "
                        "folder of text files, or a TFDS name prepared in --data-dir (e.g. pg19)")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir (nothing is downloaded)")
    p.add_argument("--pattern", default="*.txt", help="file-name pattern inside a --data folder")
    p.add_argument("--text-feature", default=None,
                   help="TFDS text feature (default: book_text for PG19, else text)")
    p.add_argument("--encoding", default="utf-8",
                   help="text encoding of the --data folder's files (e.g. latin-1); files with "
                        "undecodable bytes are counted and reported, files that are not text skipped")
    p.add_argument("--held-out-fraction", type=float, default=0.05,
                   help="share of the files held out for evaluation (of each file's end, when the "
                        "folder has too few files to hold out whole ones)")
    p.add_argument("--eval-data", default=None,
                   help="a separate folder to evaluate on, whole (instead of a held-out split)")
    p.add_argument("--preset", default="tiny_rec_fixed_skip")
    p.add_argument("--tokenizer", choices=("bytes", "sentencepiece"), default="bytes")
    p.add_argument("--vocabulary-size", type=int, default=2048, help="SentencePiece pieces")
    p.add_argument("--steps", type=int, default=300, help="total training steps")
    p.add_argument("--batch-size", type=int, default=8, help="lanes (document streams) per step")
    p.add_argument("--segment-length", type=int, default=512, help="tokens per lane per step")
    p.add_argument("--optimizer", choices=("adamw", "adafactor"), default="adamw",
                   help="adamw + cosine decay, or the paper's adafactor + inverse-sqrt decay")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="peak rate (adamw, default 1e-3) or curve scale (adafactor, default 1.0)")
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--dropout", type=float, default=None, help="default: the preset's")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-documents", type=int, default=8,
                   help="held-out documents to evaluate, each to its end (0: all)")
    p.add_argument("--no-evaluation", action="store_true",
                   help="skip the held-out evaluation at the end (run `keras-brt evaluate` later)")
    p.add_argument("--output", default=os.path.join("runs", "latest"))
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", default="none",
                   choices=("none", "auto", "one_device", "mirrored", "multi_worker", "tpu"),
                   help="tf.distribute strategy (TensorFlow backend); mirrored splits the lanes over "
                        "this host's GPUs, tpu needs --tpu")
    p.add_argument("--tpu", default=None, help="TPU name or address ('local' on a Cloud TPU VM)")
    p.add_argument("--dtype-policy", default="float32",
                   help="Keras dtype policy, e.g. mixed_bfloat16 (float32 logits and loss)")
    p.set_defaults(func=train)

    p = commands.add_parser("evaluate", help="held-out bits per token of a trained run")
    p.add_argument("run_dir")
    p.add_argument("--data", default=None, help="default: the data the run was trained on")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--pattern", default=None)
    p.add_argument("--text-feature", default=None)
    p.add_argument("--encoding", default=None, help="default: the run's")
    p.add_argument("--held-out-fraction", type=float, default=None, help="default: the run's")
    p.add_argument("--eval-data", default=None, help="a folder to evaluate on, whole")
    p.add_argument("--eval-documents", type=int, default=8)
    p.add_argument("--plot", default=None, help="PNG path (default: in RUN_DIR)")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    p.set_defaults(func=evaluate)

    p = commands.add_parser("generate", help="continue a text with a trained run's model")
    p.add_argument("run_dir")
    p.add_argument("--prompt", default=None)
    p.add_argument("--prompt-file", default=None, help="read the prompt from a file (any length)")
    p.add_argument("--encoding", default="utf-8", help="the text encoding of --prompt-file")
    p.add_argument("--max-length", type=int, default=256,
                   help="tokens of prompt (with its BOS) plus output")
    p.add_argument("--max-new-tokens", type=int, default=None, help="instead of --max-length")
    p.add_argument("--sampler", choices=("greedy", "random", "top_k", "top_p"), default="top_p")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--strip-prompt", action="store_true", help="print only the continuation")
    p.set_defaults(func=generate)

    p = commands.add_parser("export", help="write a run's model as a SavedModel for TF Serving")
    p.add_argument("run_dir")
    p.add_argument("out_dir", help="model base path; the SavedModel goes to OUT_DIR/<version>")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--scores", choices=("logits", "log_probs"), default="logits",
                   help="what serving_default and step return")
    p.add_argument("--no-text-signature", action="store_true",
                   help="leave out score_text (strings in, through the run's tokenizer)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR/<version>")
    p.set_defaults(func=export)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"keras-brt: warning: {message}\n"


def main(argv=None):
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _one_line_warning
    try:
        args.func(args)
    except (ValueError, FloatingPointError, OSError) as error:
        print(f"keras-brt {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
