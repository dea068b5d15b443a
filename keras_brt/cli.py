"""`keras-brt`: train, evaluate, generate with and export Block-Recurrent Transformers.

    keras-brt train                      # tiny model, built-in corpus, a few CPU minutes
    keras-brt train --data pg19 --data-dir ~/tensorflow_datasets --tokenizer sentencepiece
    keras-brt evaluate RUN_DIR [--json]  # held-out bits per token, state carried vs cleared
    keras-brt evaluate RUN_DIR/preset --data DIR  # a preset folder, on a folder evaluated whole
    keras-brt generate RUN_DIR --prompt TEXT --max-length N
    keras-brt export RUN_DIR OUT_DIR     # SavedModel for TF Serving in OUT_DIR/1
    keras-brt serve OUT_DIR/1            # TF Serving's REST protocol, with KServe's server
"""

import argparse
import importlib
import importlib.util
import json
import os
import re
import sys
import threading
import warnings

# Each command turns its arguments into keyword arguments of a function of keras_brt.training,
# which does the work (and is imported when the command runs).


def train(args):
    from keras_brt.training import train_run

    return train_run(
        args.output, data=args.data, data_dir=args.data_dir, pattern=args.pattern,
        text_feature=args.text_feature, encoding=args.encoding,
        held_out_fraction=args.held_out_fraction, eval_data=args.eval_data, preset=args.preset,
        tokenizer=args.tokenizer, vocabulary_size=args.vocabulary_size, steps=args.steps,
        batch_size=args.batch_size, segment_length=args.segment_length, optimizer=args.optimizer,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, clip_norm=args.clip_norm,
        dropout=args.dropout, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        eval_documents=args.eval_documents, evaluation=not args.no_evaluation, resume=args.resume,
        seed=args.seed, strategy=args.strategy, tpu=args.tpu, dtype_policy=args.dtype_policy,
        distribution=args.distribution,
    )


def evaluate(args):
    from keras_brt.training import evaluate_run_dir

    report = evaluate_run_dir(
        args.run_dir, data=args.data, data_dir=args.data_dir, pattern=args.pattern,
        text_feature=args.text_feature, encoding=args.encoding,
        held_out_fraction=args.held_out_fraction, eval_data=args.eval_data,
        eval_documents=args.eval_documents, plot=args.plot, batch_size=args.batch_size,
        segment_length=args.segment_length,
    )
    if args.json:
        print(json.dumps(report))
    return report


def generate(args):
    from keras_brt.training import generate_from_run

    text = generate_from_run(
        args.run_dir, args.prompt, prompt_file=args.prompt_file, encoding=args.encoding,
        max_length=args.max_length, max_new_tokens=args.max_new_tokens, sampler=args.sampler,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        strip_prompt=args.strip_prompt,
    )
    print(text)
    return text


def export(args):
    from keras_brt.training import export_run

    return export_run(args.run_dir, args.out_dir, version=args.version, scores=args.scores,
                      text_signature=not args.no_text_signature, overwrite=args.overwrite)


def serve(args):
    if not os.path.isfile(os.path.join(args.saved_model, "saved_model.pb")):
        raise ValueError("`SAVED_MODEL` must be a SavedModel folder (with saved_model.pb), e.g. "
                         f"OUT_DIR/1 of keras-brt export. Received: {args.saved_model!r}")
    if importlib.util.find_spec("kserve") is None:
        raise ValueError("`keras-brt serve` runs KServe's model server: pip install kserve "
                         "(or keras-brt[serve]). Received: kserve is not installed")
    from keras_brt.serving import serve as serve_model

    serve_model(args.saved_model, args.model_name, args.port, max_body_bytes=args.max_body_bytes,
                max_batch_size=args.max_batch_size,
                max_tokens_per_request=args.max_tokens_per_request,
                max_response_bytes=args.max_response_bytes)


# === Command line ===


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless the help says it already (an
    option whose default is None says what it does instead, a flag is off); the
    description and epilog keep their line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if re.search(r"\bdefault\b", text) or action.default is None or action.nargs == 0:
            return text
        return super()._get_help_string(action)


def preset_table():
    """`{name: description}` of the built-in presets, read from keras_brt/models/presets.py
    as a plain file (it imports nothing), so that `--help` imports no Keras."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "presets.py")
    spec = importlib.util.spec_from_file_location("keras_brt_preset_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: preset["metadata"]["description"] for name, preset in module.PRESETS.items()}


RUN_DIRECTORY = """\
a run directory (--output) holds:
  run.json              the command's settings and the package version
  tokenizer.json        the tokenizer (tokenizer.model too for SentencePiece)
  checkpoint.keras      weights, optimizer state and every lane's carried state,
                        every --checkpoint-every steps (checkpoint.json: its step)
  model.keras           the final model (keras.saving.load_model)
  preset/               the final model to share: config.json, model.weights.h5,
                        tokenizer.json, metadata.json (from_preset(folder) loads it)
  history.csv, logs/    the metrics every --log-every steps; TensorBoard logs
  evaluation.json       held-out bits per token and per byte, state carried and cleared
  loss_by_position.png  held-out bits per token by position inside the documents"""

RUN_OR_PRESET = """\
RUN_DIR is a run directory of keras-brt train (`keras-brt train --help` says what
it holds), or a preset folder such as RUN_DIR/preset (save_to_preset's layout)."""


def _train_epilog():
    presets = "\n".join(f"  {name:<20}  {text}" for name, text in preset_table().items())
    return f"presets (--preset):\n{presets}\n\n{RUN_DIRECTORY}"


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-brt", description=__doc__.splitlines()[0],
                                     epilog="\n".join(__doc__.splitlines()[1:]).strip("\n"),
                                     formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train a model (defaults: tiny preset, built-in corpus)",
                            description="Train a model in a run directory, then evaluate it on "
                                        "held-out data.",
                            epilog=_train_epilog(), formatter_class=HelpFormatter)
    p.add_argument("--data", default="stdlib",
                   help="'stdlib' (this Python's standard library sources, the built-in corpus), a "
                        "folder of text files, or a TFDS name prepared in --data-dir (e.g. pg19)")
    p.add_argument("--data-dir", default=None,
                   help="TFDS data_dir (nothing is downloaded; default: TFDS's own, "
                        "~/tensorflow_datasets)")
    p.add_argument("--pattern", default="*.txt",
                   help="file-name pattern inside a --data folder, e.g. '*.py' (quote it); the "
                        "command says how many of the folder's files match before training")
    p.add_argument("--text-feature", default=None,
                   help="TFDS text feature (default: book_text for PG19, else text)")
    p.add_argument("--encoding", default="utf-8",
                   help="text encoding of the --data folder's files (e.g. latin-1); files with "
                        "undecodable bytes are counted and reported, files that are not text skipped")
    p.add_argument("--held-out-fraction", type=float, default=0.05,
                   help="share of the files held out for evaluation (of each file's end, when the "
                        "folder has too few files to hold out whole ones)")
    p.add_argument("--eval-data", default=None,
                   help="a separate folder to evaluate on, whole (default: none, a held-out "
                        "split of --data)")
    p.add_argument("--preset", default="tiny_rec_fixed_skip",
                   help="the model: one of the presets listed below")
    p.add_argument("--tokenizer", choices=("bytes", "sentencepiece"), default="bytes",
                   help="bytes, or a SentencePiece model trained on the training documents")
    p.add_argument("--vocabulary-size", type=int, default=2048,
                   help="SentencePiece pieces (with --tokenizer sentencepiece)")
    p.add_argument("--steps", type=int, default=300, help="total training steps")
    p.add_argument("--batch-size", type=int, default=8, help="lanes (document streams) per step")
    p.add_argument("--segment-length", type=int, default=512, help="tokens per lane per step")
    p.add_argument("--optimizer", choices=("adamw", "adafactor"), default="adamw",
                   help="adamw + cosine decay, or the paper's adafactor + inverse-sqrt decay")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="peak rate (adamw, default 1e-3) or curve scale (adafactor, default 1.0)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warm-up steps (default: 1000, or a tenth of a run shorter than "
                        "10,000 steps)")
    p.add_argument("--clip-norm", type=float, default=1.0, help="global gradient-norm clipping")
    p.add_argument("--dropout", type=float, default=None, help="default: the preset's")
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="steps between checkpoints (what --resume continues from)")
    p.add_argument("--log-every", type=int, default=25,
                   help="steps between progress lines and history.csv rows")
    p.add_argument("--eval-documents", type=int, default=8,
                   help="held-out documents to evaluate, each to its end (0: all)")
    p.add_argument("--no-evaluation", action="store_true",
                   help="skip the held-out evaluation at the end (run `keras-brt evaluate` later)")
    p.add_argument("--output", default=os.path.join("runs", "latest"),
                   help="the run directory (see below); an existing run is never overwritten")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last checkpoint")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed (initial weights, document order)")
    p.add_argument("--strategy", default="none",
                   choices=("none", "auto", "one_device", "mirrored", "multi_worker", "tpu"),
                   help="tf.distribute strategy (TensorFlow backend); mirrored splits the lanes over "
                        "this host's GPUs, tpu needs --tpu")
    p.add_argument("--tpu", default=None,
                   help="TPU name or address ('local' on a Cloud TPU VM; default: none)")
    p.add_argument("--distribution", default="none", choices=("none", "data_parallel"),
                   help="keras.distribution (JAX backend): data_parallel splits the lanes over "
                        "every device JAX sees, each keeping its rows' state")
    p.add_argument("--dtype-policy", default="float32",
                   help="Keras dtype policy, e.g. mixed_bfloat16 (float32 logits and loss)")
    p.set_defaults(func=train)

    p = commands.add_parser("evaluate", help="held-out bits per token of a trained run",
                            description="Held-out bits per token of a run's model (or a preset "
                                        "folder's), with the state carried and cleared.",
                            epilog=RUN_OR_PRESET, formatter_class=HelpFormatter)
    p.add_argument("run_dir", help="a run directory, or a preset folder (then --data is needed)")
    p.add_argument("--data", default=None, help="a folder (evaluated whole: every matching file is held-out data), 'stdlib' or a TFDS name (its held-out split); default: the run's held-out data")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir (default: the run's)")
    p.add_argument("--pattern", default=None,
                   help="file-name pattern inside a folder (default: the run's, else '*.txt')")
    p.add_argument("--text-feature", default=None, help="TFDS text feature (default: the run's)")
    p.add_argument("--encoding", default=None, help="default: the run's, else utf-8")
    p.add_argument("--held-out-fraction", type=float, default=None,
                   help="default: the run's, else 0.05")
    p.add_argument("--eval-data", default=None,
                   help="a folder to evaluate on, whole (default: the run's, if it had one)")
    p.add_argument("--eval-documents", type=int, default=8,
                   help="held-out documents to evaluate, each to its end (0: all)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="lanes (default: the run's; 8 for a preset folder)")
    p.add_argument("--segment-length", type=int, default=None,
                   help="tokens per lane per step (default: the run's; 4 blocks for a preset folder)")
    p.add_argument("--plot", default=None,
                   help="PNG path (default: RUN_DIR/evaluation_loss_by_position.png; for a preset "
                        "folder, in the working directory)")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    p.set_defaults(func=evaluate)

    p = commands.add_parser("generate", help="continue a text with a trained run's model",
                            description="Continue a text with a run's model (or a preset "
                                        "folder's).",
                            epilog=RUN_OR_PRESET, formatter_class=HelpFormatter)
    p.add_argument("run_dir", help="a run directory, or a preset folder")
    p.add_argument("--prompt", default=None, help="the text to continue (default: none; give it "
                                                  "or --prompt-file)")
    p.add_argument("--prompt-file", default=None,
                   help="read the prompt from a file (any length; default: none, --prompt)")
    p.add_argument("--encoding", default="utf-8", help="the text encoding of --prompt-file")
    p.add_argument("--max-length", type=int, default=256,
                   help="tokens of prompt (with its BOS) plus output")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens to add, instead of --max-length (default: none, --max-length)")
    p.add_argument("--sampler", choices=("greedy", "random", "top_k", "top_p"), default="top_p",
                   help="how each token is chosen")
    p.add_argument("--temperature", type=float, default=1.0, help="the sampler's temperature")
    p.add_argument("--top-k", type=int, default=40, help="k of --sampler top_k")
    p.add_argument("--top-p", type=float, default=0.9, help="p of --sampler top_p")
    p.add_argument("--seed", type=int, default=None,
                   help="sampling seed, for reproducible text (default: none, unseeded)")
    p.add_argument("--strip-prompt", action="store_true", help="print only the continuation")
    p.set_defaults(func=generate)

    p = commands.add_parser("export", help="write a run's model as a SavedModel for TF Serving",
                            description="Write a run's model (or a preset folder's) as a "
                                        "SavedModel for TF Serving.",
                            epilog=RUN_OR_PRESET, formatter_class=HelpFormatter)
    p.add_argument("run_dir", help="a run directory, or a preset folder")
    p.add_argument("out_dir", help="model base path; the SavedModel goes to OUT_DIR/<version>")
    p.add_argument("--version", type=int, default=1, help="the SavedModel's folder in OUT_DIR")
    p.add_argument("--scores", choices=("logits", "log_probs"), default="logits",
                   help="what serving_default and step return")
    p.add_argument("--no-text-signature", action="store_true",
                   help="leave out score_text (strings in, through the run's tokenizer)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR/<version>")
    p.set_defaults(func=export)
    p = commands.add_parser("serve", help="serve an exported SavedModel over TF Serving's REST "
                                          "protocol (KServe's Python server)",
                            formatter_class=HelpFormatter)
    p.add_argument("saved_model", help="the SavedModel folder, e.g. OUT_DIR/1 of keras-brt export")
    p.add_argument("--model-name", default="brt", help="served at /v1/models/NAME:predict")
    p.add_argument("--port", type=int, default=8501, help="the HTTP port")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="larger request bodies are refused with 413 after they are read (the "
                        "state travels in them; default 4 MiB)")
    p.add_argument("--max-batch-size", type=int, default=None,
                   help="the most rows a request may have or ask for (initial_state's batch_size, "
                        "the rows of token_ids or text, the instances); more is refused with 400 "
                        "(default 256)")
    p.add_argument("--max-tokens-per-request", type=int, default=None,
                   help="the most tokens of a request, rows x tokens (a text counts as its UTF-8 "
                        "bytes + 2, padded to the longest); more is refused with 400 "
                        "(default 65536)")
    p.add_argument("--max-response-bytes", type=int, default=None,
                   help="the largest answer, its JSON size estimated from the request before the "
                        "model runs (25 bytes a float: logits are rows x tokens x vocabulary of "
                        "them); larger is refused with 400 (default 64 MiB)")
    p.set_defaults(func=serve)

    for p in commands.choices.values():
        p.add_argument("--verbose", action="store_true",
                       help="show TensorFlow's and XLA's native start-up log lines (hidden by default)")
    return parser


# TensorFlow and XLA log from C++ straight to file descriptor 2, past Python and past
# TF_CPP_MIN_LOG_LEVEL for their start-up lines: "I0000 00:00:... port.cc:153] ...", absl's
# notice, the CPU-feature notice's second line, and "failed call to cuInit" (an E line) on a
# machine without a GPU. Fatal (F) lines are always shown.
NATIVE_LOG_LINE = re.compile(
    r"([IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.\-/]+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: .* rebuild TensorFlow)"
)


class NativeLogFilter:
    """Within it, lines written to file descriptor 2 that are native TensorFlow / XLA
    log lines of the INFO, WARNING and ERROR levels are dropped; every other line (fatal
    native lines, Python's warnings and errors) is passed on.
    Used only around start-up (see `quiet_start_up`): a pipe read by a thread would lose
    what a crashing process wrote last."""

    def __enter__(self):
        sys.stderr.flush()
        self.stderr = os.dup(2)
        self.out = os.dup(self.stderr)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self.thread = threading.Thread(target=self._forward, args=(read,), daemon=True)
        self.thread.start()
        return self

    def _forward(self, read):
        pending = b""
        while True:
            chunk = os.read(read, 65536)
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop() if chunk else b""
            for line in lines:  # at the end, the last line without its newline too
                if line and not NATIVE_LOG_LINE.match(line.decode("utf-8", "replace")):
                    try:
                        os.write(self.out, line + b"\n")
                    except OSError:
                        pass  # stderr is gone; keep draining so that writers never block
            if not chunk:
                break
        os.close(read)

    def __exit__(self, *exc_info):
        sys.stderr.flush()
        os.dup2(self.stderr, 2)  # the pipe's last writer gone: the thread reads to its end
        self.thread.join(timeout=10)
        os.close(self.stderr)
        os.close(self.out)


def quiet_start_up():
    """Starts TensorFlow and the Keras backend with their native start-up lines hidden.
    Later INFO lines logged through TensorFlow's own logging are off too
    (`TF_CPP_MIN_LOG_LEVEL=1`, unless set); later warnings and errors are shown."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    with NativeLogFilter():
        if importlib.util.find_spec("tensorflow") is not None:
            importlib.import_module("tensorflow")
        keras = importlib.import_module("keras")
        keras.ops.convert_to_tensor(0)  # the backend's devices start here
        importlib.import_module("keras_brt.models")  # and the classes are registered


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"keras-brt: warning: {message}\n"


def main(argv=None):
    args = build_parser().parse_args(argv)  # no Keras yet: `--help` answers at once
    warnings.formatwarning = _one_line_warning
    try:
        if not args.verbose:
            quiet_start_up()
        args.func(args)
    except ModuleNotFoundError as error:
        if error.name != "jax":
            raise
        print(f"keras-brt {args.command}: error: Keras's JAX backend is chosen (KERAS_BACKEND, or "
              f"\"backend\" in ~/.keras/keras.json) and JAX is not installed: pip install -e "
              f"\".[jax]\" in the keras_brt folder (or pip install \"jax[cpu]\"), or use the "
              f"TensorFlow backend that keras-brt installs. Received: "
              f"KERAS_BACKEND={os.environ.get('KERAS_BACKEND')!r}", file=sys.stderr)
        return 2
    except (ValueError, FloatingPointError, OSError) as error:
        print(f"keras-brt {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
