"""A whole training run in a run directory: `train_run`, resumable after a kill.

`keras-brt train` is this function with its arguments from the command line;
errors name the command's flags (`--steps`, `--output`, ...) of the arguments.
"""

import itertools
import os
import shlex
import sys
import time

import keras

from keras_brt.distribute.replicas import strategy_scope
from keras_brt.training import runs
from keras_brt.training.callbacks import StepHistory
from keras_brt.training.data_choice import (check_held_out_size, report_data, report_encoding,
                                             resolve_data)
from keras_brt.training.metrics import BitsPerToken
from keras_brt.training.optimizers import make_optimizer
from keras_brt.training.progress import TerminalProgress, TrainingNotices, format_duration
from keras_brt.training.run_evaluation import evaluate_run, print_report
from keras_brt.version import __version__

# Settings that must not change when a run is resumed.
RESUME_KEYS = ("data", "data_dir", "pattern", "text_feature", "preset", "tokenizer", "vocabulary_size",
               "batch_size", "segment_length", "optimizer", "learning_rate", "warmup_steps",
               "dropout", "seed", "dtype_policy", "encoding", "held_out_fraction")
# For runs written before the setting existed.
RESUME_DEFAULTS = {"dtype_policy": "float32", "encoding": "utf-8", "held_out_fraction": 0.05}
DTYPE_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16", "bfloat16")


class ProgressLog(keras.callbacks.Callback):
    """Prints one line every `every` steps, for output that is not a terminal.

    Args:
        every: steps between lines (and the last step).
        total: the run's total steps.
    """

    def __init__(self, every, total):
        super().__init__()
        self.every, self.total = every, total

    def on_train_begin(self, logs=None):
        # Counted from here on: reading the optimizer every step would make the host wait
        # for each step.
        self.step = int(self.model.optimizer.iterations.numpy())
        self.first = self.start = None  # the rate counts from the end of the first step

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        step = self.step
        if self.first is None:  # the first step compiled: leave it out of the rate
            self.first, self.start = step, time.time()
        if step % self.every == 0 or step == self.total:
            rate = "" if step == self.first else (
                f" ({(step - self.first) / max(time.time() - self.start, 1e-9):.2f} steps/s)")
            metrics = " ".join(f"{k}={float(v):.4f}" for k, v in (logs or {}).items())
            print(f"step {step}/{self.total} {metrics}{rate}", flush=True)


def check_settings(batch_size, steps, segment_length, checkpoint_every, strategy, dtype_policy,
                   distribution="none"):
    """Raises a `ValueError` for settings no run can start with (before anything is read)."""
    for flag, value, low in (("--batch-size", batch_size, 1), ("--steps", steps, 1),
                             ("--segment-length", segment_length, 1),
                             ("--checkpoint-every", checkpoint_every, 1)):
        if value < low:
            raise ValueError(f"`{flag}` must be at least {low}. Received: {flag}={value}")
    if strategy == "multi_worker":
        raise ValueError(
            "`keras-brt train` runs in one process; train on several hosts from Python with "
            "keras_brt.distribute (see the multi-host recipe in docs/distribution.md). Received: "
            "--strategy='multi_worker'"
        )
    if strategy != "none" and keras.backend.backend() != "tensorflow":
        raise ValueError(
            "`--strategy` uses tf.distribute: run with KERAS_BACKEND=tensorflow. Received: "
            f"--strategy={strategy!r} with backend={keras.backend.backend()!r}"
        )
    if distribution not in ("none", "data_parallel"):
        raise ValueError(f"`--distribution` must be none or data_parallel. Received: "
                         f"--distribution={distribution!r}")
    if distribution != "none" and keras.backend.backend() != "jax":
        raise ValueError(
            "`--distribution` uses keras.distribution: run with KERAS_BACKEND=jax (on TensorFlow, "
            f"use --strategy). Received: --distribution={distribution!r} with "
            f"backend={keras.backend.backend()!r}"
        )
    if dtype_policy not in DTYPE_POLICIES:
        raise ValueError(
            "`--dtype-policy` must be float32, mixed_bfloat16, mixed_float16 or bfloat16. "
            f"Received: --dtype-policy={dtype_policy!r}"
        )


def check_output(output, resume):
    """Whether `output` holds a run to resume; a `ValueError` where `resume` does not fit it.

    Args:
        output: the run directory.
        resume: whether the run in `output` is to be continued.

    Returns:
        `True` when resuming the run in `output`, `False` for a new run.
    """
    if os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"`--output` must be a run directory, not a file. Received: --output={output!r}")
    resuming = os.path.isfile(os.path.join(output, "run.json"))
    if resume and not resuming:
        raise ValueError(
            "`--resume` continues the run in --output, and there is none: "
            + ("the directory does not exist" if not os.path.isdir(output) else "it holds no run.json")
            + f". Received: --output={output!r}"
        )
    if resuming and not resume:
        raise ValueError(
            f"`--output` already holds a run; pass --resume to continue it, or choose another "
            f"--output (nothing is overwritten). Received: --output={output!r}"
        )
    return resuming


def check_resume(run, settings, output):
    """Raises a `ValueError` where `settings` change one of the `RESUME_KEYS` of `run`.

    Args:
        run: the run's `run.json`.
        settings: the settings of the command (as `run.json` stores them).
        output: the run directory, for the message.
    """
    changed = {k: (run.get(k), v) for k, v in settings.items()
               if k in RESUME_KEYS and run.get(k, RESUME_DEFAULTS.get(k)) != v}
    if changed:
        raise ValueError(
            "--resume continues a run with its own settings; these differ (run, command): "
            f"{changed}. Received: --output={output!r}"
        )


def _data_parallel_note():
    spread = keras.distribution.distribution()
    if spread is None:
        return ""
    from keras_brt.distribute import jax_distribution

    return f", keras.distribution data parallel over {jax_distribution.device_count(spread)} devices"


def train_run(output, *, data="stdlib", data_dir=None, pattern="*.txt", text_feature=None,
              encoding="utf-8", held_out_fraction=0.05, eval_data=None, preset="tiny_rec_fixed_skip",
              tokenizer="bytes", vocabulary_size=2048, steps=300, batch_size=8, segment_length=512,
              optimizer="adamw", learning_rate=None, warmup_steps=None, clip_norm=1.0, dropout=None,
              checkpoint_every=100, log_every=25, eval_documents=8, evaluation=True, resume=False,
              seed=0, strategy="none", tpu=None, dtype_policy="float32", distribution="none"):
    """Trains a model in a run directory, then evaluates it on held-out data.

    Writes the run directory described in `keras_brt.training.runs`: the
    settings (`run.json`), the tokenizer, a checkpoint every
    `checkpoint_every` steps, `history.csv`, TensorBoard logs, the final
    `model.keras`, and with `evaluation` `evaluation.json` and
    `loss_by_position.png`. A run is never overwritten: with `resume=True`
    the run in `output` continues from its last checkpoint with its own
    settings (a setting of `RESUME_KEYS` that differs is an error). Prints
    its progress (one line every `log_every` steps when the output is not a
    terminal, else Keras's progress bar) and the evaluation's summary.

    Args:
        output: the run directory.
        data: `"stdlib"`, a folder of text files or a TFDS name (see `resolve_data`).
        data_dir: the TFDS data directory (nothing is downloaded).
        pattern: file-name pattern inside a `data` folder.
        text_feature: the TFDS text feature.
        encoding: text encoding of the folders' files.
        held_out_fraction: share of `data` held out for evaluation.
        eval_data: a separate folder to evaluate on, whole.
        preset: the name of a model preset.
        tokenizer: `"bytes"`, or `"sentencepiece"` to train one on `data`.
        vocabulary_size: SentencePiece pieces.
        steps: total training steps.
        batch_size: lanes (document streams) per step.
        segment_length: tokens per lane per step, a multiple of the preset's block size.
        optimizer: `"adamw"` (cosine decay) or `"adafactor"` (inverse-sqrt decay);
            see `make_optimizer`.
        learning_rate: peak rate (adamw) or curve scale (adafactor); `None`: the optimizer's.
        warmup_steps: `None`: the optimizer's.
        clip_norm: global gradient-norm clipping.
        dropout: `None`: the preset's.
        checkpoint_every: steps between checkpoints.
        log_every: steps between history rows and progress lines.
        eval_documents: held-out documents to evaluate, each to its end (0: all).
        evaluation: `False` skips the held-out evaluation (and needs no held-out data).
        resume: continue the run in `output`.
        seed: the random seed (initialisation, data shuffling).
        strategy: `"none"`, or a `tf.distribute` strategy name of
            `keras_brt.distribute.get_strategy` (TensorFlow backend; not
            `"multi_worker"`, which needs one process per host).
        tpu: TPU name or address, for `strategy="tpu"`.
        dtype_policy: `"float32"`, `"mixed_bfloat16"`, `"mixed_float16"` or `"bfloat16"`.
        distribution: `"none"`, or `"data_parallel"` (JAX backend): the run
            trains under `keras_brt.distribute.data_parallel()` over every device
            JAX sees, each carrying its rows of the lanes; `batch_size` must be
            a multiple of the device count. Not a resume setting: a run may
            continue on another number of devices.

    Returns:
        The evaluation report (as in `evaluation.json`), or `None` with
        `evaluation=False`.
    """
    arguments = dict(locals())  # first: exactly this call's arguments
    import keras_brt
    from keras_brt.data import ByteTokenizer, SentencePieceTokenizer, lane_dataset, train_sentencepiece

    check_settings(batch_size, steps, segment_length, checkpoint_every, strategy, dtype_policy,
                   distribution)
    if distribution != "none":
        from keras_brt.distribute import jax_distribution

        spread = jax_distribution.data_parallel()
        devices = jax_distribution.device_count(spread)
        if batch_size % devices:
            raise ValueError(
                f"`--batch-size` must be a multiple of the {devices} devices that "
                f"--distribution={distribution} splits the lanes over. Received: "
                f"--batch-size={batch_size}"
            )
        with spread.scope():  # the model, its lanes, fit and the evaluation, all under it
            return train_run(**{**arguments, "distribution": "none"})
    resuming = check_output(output, resume)
    train_source, test_source = resolve_data(
        data, data_dir, pattern, text_feature, encoding, held_out_fraction, eval_data,
        held_out=evaluation)
    report_data(train_source, test_source)  # before anything is trained on it
    tf_strategy = None
    if strategy != "none":
        from keras_brt import distribute

        tf_strategy = distribute.get_strategy(strategy, tpu=tpu)
        distribute.per_replica_batch_size(batch_size, tf_strategy)
    preset_config = keras_brt.models.PRESETS.get(preset)
    if preset_config is None:
        raise ValueError(
            f"Unknown preset. Available: {sorted(keras_brt.models.PRESETS)}. "
            f"Received: --preset={preset!r}"
        )
    block = preset_config["config"]["block_size"]
    if segment_length % block:
        raise ValueError(
            f"`--segment-length` must be a multiple of the block size {block} of preset "
            f"{preset!r}. Received: --segment-length={segment_length}"
        )
    keras.utils.set_random_seed(seed)

    settings = {  # run.json, in this order
        "format": None,  # RUN_FORMAT, once written
        "keras_brt_version": __version__,
        "data": data, "data_dir": data_dir, "pattern": pattern,
        "text_feature": text_feature, "encoding": encoding,
        "held_out_fraction": held_out_fraction, "eval_data": eval_data,
        "preset": preset, "tokenizer": tokenizer, "vocabulary_size": None,
        "batch_size": batch_size, "segment_length": segment_length,
        "optimizer": optimizer, "learning_rate": learning_rate,
        "warmup_steps": warmup_steps, "dropout": dropout, "seed": seed,
        "steps": steps, "checkpoint_every": checkpoint_every,
        "strategy": strategy, "dtype_policy": dtype_policy,
    }
    lm = None
    if resuming:
        run = runs.read_run(output)
        text_tokenizer = runs.load_tokenizer(output)
        check_resume(run, {**settings, "vocabulary_size": run.get("vocabulary_size")}, output)
        checkpoint = os.path.join(output, runs.CHECKPOINT)
        if os.path.exists(checkpoint):
            with strategy_scope(tf_strategy):
                lm = runs.load_checkpoint(checkpoint)
    else:
        os.makedirs(output, exist_ok=True)
        if tokenizer == "sentencepiece":
            print(f"Training a SentencePiece model ({vocabulary_size} pieces) on {train_source.name}",
                  flush=True)
            docs = itertools.islice(train_source.documents(), 2000)
            text_tokenizer = SentencePieceTokenizer(train_sentencepiece(docs, vocabulary_size))
        else:
            text_tokenizer = ByteTokenizer()
        runs.save_tokenizer(text_tokenizer, output)
        run = {**settings, "vocabulary_size": -(-text_tokenizer.vocabulary_size // 8) * 8}
        run["format"] = runs.RUN_FORMAT
        runs.write_json(os.path.join(output, "run.json"), run)

    if lm is None:
        overrides = {"vocabulary_size": run["vocabulary_size"], "dtype": dtype_policy}
        if dropout is not None:
            overrides["dropout"] = dropout
        with strategy_scope(tf_strategy):
            lm = keras_brt.models.BlockRecurrentTransformerCausalLM.from_preset(preset, **overrides)
            lm.compile(
                optimizer=make_optimizer(optimizer, steps, learning_rate, warmup_steps,
                                         clip_norm=clip_norm),
                weighted_metrics=[BitsPerToken()],
                jit_compile=True,  # XLA per replica under a multi-replica strategy too
            )
            lm.build({"token_ids": (batch_size, segment_length)})
    if test_source is not None:
        check_held_out_size(test_source, text_tokenizer, batch_size, segment_length, eval_documents)
    start_step = int(lm.optimizer.iterations.numpy())
    remaining = steps - start_step
    saving = (f"saving the model in {output}: " + (f"{runs.CHECKPOINT}, " if remaining > 0 else "")
              + "model.keras and preset/...")
    print(
        f"{'Resuming' if start_step else 'Training'} {preset} on {train_source.name} "
        f"(backend {keras.backend.backend()}): step {start_step} of {steps}, "
        f"{batch_size} lanes x {segment_length} tokens, {tokenizer} tokenizer "
        f"({run['vocabulary_size']} ids), {dtype_policy}"
        + ("" if tf_strategy is None
           else f", {type(tf_strategy).__name__} x{tf_strategy.num_replicas_in_sync}")
        + _data_parallel_note(),
        flush=True,
    )
    if remaining > 0:
        dataset = lane_dataset(
            train_source, text_tokenizer, batch_size, segment_length,
            repeat=True, shuffle_buffer=1024, seed=seed,
        ).skip(start_step)  # The lane stream is deterministic: skip what was trained on.
        checkpoints = runs.RunCheckpoint(output, checkpoint_every)
        callbacks = [  # the history row of a step is written before its checkpoint
            StepHistory(os.path.join(output, "history.csv"), log_every),
            checkpoints,
            keras.callbacks.TensorBoard(os.path.join(output, "logs"), update_freq=log_every),
        ]
        notices = TrainingNotices(start_step, saving)
        callbacks.append(notices)
        # A terminal gets one line rewritten in place (its ETA leaves the compiled first
        # step out, unlike Keras's bar); other output a line every `log_every` steps.
        if sys.stdout.isatty():
            callbacks.append(TerminalProgress(steps, start_step))
        else:
            callbacks.append(ProgressLog(log_every, steps))
        lm.fit(dataset, steps_per_epoch=remaining, epochs=1, callbacks=callbacks, verbose=0)
        saved_from = notices.ended or time.monotonic()  # its line printed as training ended
        checkpoints.set_model(lm)
        checkpoints.save()
    else:
        saved_from = time.monotonic()
        print(saving, flush=True)
    lm.save(os.path.join(output, "model.keras"))
    lm.generator.tokenizer = text_tokenizer
    lm.save_to_preset(os.path.join(output, "preset"))  # the model to share: weights, tokenizer
    print(f"saved in {format_duration(time.monotonic() - saved_from)}: "
          f"{os.path.join(output, 'model.keras')} (the model, optimizer and lanes) and "
          f"{os.path.join(output, 'preset')} (weights and tokenizer, to share)", flush=True)
    report_encoding(train_source, "training data")  # files past what report_data checked
    if not evaluation:
        print(f"run saved in {output} (held-out evaluation skipped: keras-brt evaluate {output})")
        print_next_commands(output, _prompt_for(data, pattern), evaluated=False)
        return None
    report, results = evaluate_run(lm, text_tokenizer, test_source, batch_size, segment_length,
                                   eval_documents)
    runs.write_json(os.path.join(output, "evaluation.json"), report)
    runs.plot_loss_by_position(results, os.path.join(output, "loss_by_position.png"),
                               f"{preset} on {test_source.name}")
    print_report(report)
    print(f"run saved in {output}")
    print_next_commands(output, _prompt_for(data, pattern))
    return report


def _prompt_for(data, pattern):
    """A prompt to try on a model trained on `data`: code for code, else prose."""
    return "def " if data == "stdlib" or pattern.endswith(".py") else "The "


def print_next_commands(output, prompt, evaluated=True):
    """Prints what to try with the run in `output`: the commands, ready to paste."""
    run = shlex.quote(output)
    print("next:\n"
          f"  keras-brt generate {run} --prompt {shlex.quote(prompt)} --max-new-tokens 200\n"
          + (f"  keras-brt evaluate {run} --data DIR   # bits per token on a folder of your own\n"
             if evaluated else f"  keras-brt evaluate {run}   # held-out bits per token\n")
          + f"  keras-brt export {run} {shlex.quote(os.path.join(output, 'export'))}"
          f"   # a SavedModel for TF Serving\n"
          f"  tensorboard --logdir {shlex.quote(os.path.join(output, 'logs'))}", flush=True)
