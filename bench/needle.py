"""Needle recall: can the recurrent state carry a few random tokens across many blocks?

The task is `keras_brt.data.needles`: a stream of episodes per lane, each a document whose
first block holds `needles` random payload tokens (1 of 22 ids each) among filler and whose
query block, `distance` blocks later, asks for them in order. The loss counts only the recalled
tokens. Episodes are whole training segments long, so a distance of 30 blocks with 10-block
segments crosses segment boundaries: the state is carried there with no gradient.
`--eval-segment-blocks` measures recall on other segments than training's (e.g. train on
segments that hold whole episodes, so that every query's gradient reaches its needle, and
evaluate across 10-block segments).

Models (2 layers, D=64, W=8, 8 state vectors, vocabulary 32, Adam):
- `rec`:  Rec:fixed:skip (the recurrent layer last) on segments of `--segment-blocks` blocks;
- `slide`: the same without the state (sliding window only, receptive field 2W tokens);
- `full`:  no state, one block (window) covering a whole episode: what attention alone reaches.

Chance is 1/22 = 0.045. Prints a table of recall accuracy per evaluation distance, one row per
model, and writes JSON with the configuration.

    KERAS_BACKEND=jax python bench/needle.py --needles 1 --train-distances 1-30 --eval 5,10,30
"""

import argparse
import datetime
import json
import os
import sys
import time

import keras
import numpy as np

import keras_brt
from keras_brt.data import needle_lanes, needle_recall_accuracy
from keras_brt.data.needles import PAYLOAD, VOCABULARY_SIZE
from keras_brt.layers.common import check_positive_int
from keras_brt.training.optimizers import STATE_PATH, GroupedAdamW, make_optimizer
from speed import device_kind  # bench/ is on the path when run as a script
from state_probe import cell_parameters, recurrent_cells

W = 8


def parse_range(text):
    """"1-30" → [1..30]; "5,10" → [5, 10]."""
    values = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        values.extend(range(int(lo), int(hi or lo) + 1))
    return values


def make_lm(model, episode_tokens, args, dtype):
    common = dict(vocabulary_size=VOCABULARY_SIZE, num_layers=2, hidden_dim=64, num_heads=4, head_dim=16,
                  intermediate_dim=256, num_state_vectors=args.state_vectors,
                  attention_scale_init=args.attention_scale_init, dtype=dtype)
    common.update(json.loads(args.config))  # may move the recurrent layer: {"recurrent_layers": [1]}
    if model == "rec":
        config = dict({"recurrent_layers": (-1,)}, **common, block_size=W)
    elif model == "slide":
        config = dict(common, block_size=W, recurrent_layers=())
    else:  # "full": the window covers a whole episode.
        config = dict(common, block_size=episode_tokens, recurrent_layers=())
    backbone = keras_brt.models.BlockRecurrentTransformerBackbone(**config)
    return keras_brt.models.BlockRecurrentTransformerCausalLM(backbone), config


class Trace(keras.callbacks.Callback):
    """Every `every` steps: the loss, recall at each evaluation distance, and the state
    path's scales and gate."""

    def __init__(self, every, log, evaluate):
        super().__init__()
        self.every, self.log, self.evaluate, self.rows = every, log, evaluate, []

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every:
            return
        row = {"step": batch + 1, "loss": float(logs["loss"]), "accuracy": self.evaluate(self.model)}
        for _, cell in recurrent_cells(self.model):
            row.update(cell_parameters(cell))
        self.rows.append(row)
        if self.log:
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                              if k in ("step", "loss", "accuracy") or "state" in k}), flush=True)


def run(model, args, dtype):
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    distances = parse_range(args.train_distances)
    segment_blocks = args.segment_blocks
    eval_segment_blocks = args.eval_segment_blocks or segment_blocks
    if model == "full":  # One segment = one episode = one window, in training and evaluation.
        segment_blocks = eval_segment_blocks = max(distances) + 1
    lm, config = make_lm(model, segment_blocks * W, args, dtype)
    if args.optimizer == "adafactor":  # the paper's recipe; --learning-rate scales its curve
        optimizer = make_optimizer("adafactor", steps=args.steps, warmup_steps=args.warmup_steps,
                                   learning_rate=args.learning_rate)
    elif args.state_lr_multiplier != 1.0:  # Adam with the state path's rate multiplied
        optimizer = GroupedAdamW({STATE_PATH: args.state_lr_multiplier}, learning_rate=args.learning_rate,
                                 weight_decay=0.0, global_clipnorm=1.0)
    else:
        optimizer = keras.optimizers.Adam(args.learning_rate, global_clipnorm=1.0)
    lm.compile(optimizer=optimizer, jit_compile=True)
    x, y, w = needle_lanes(rng, args.steps, args.batch, distances, args.needles, W, segment_blocks)
    def evaluate(lm, rows=256):
        eval_rng = np.random.default_rng(args.seed + 1000)  # the same episodes every time
        return {d: needle_recall_accuracy(lm, eval_rng, d, args.needles, W, eval_segment_blocks, rows)
                for d in parse_range(args.eval)}

    trace = Trace(args.trace_every, args.verbose, evaluate)
    start = time.perf_counter()
    lm.fit(x, y, sample_weight=w, batch_size=args.batch, shuffle=False, verbose=0, callbacks=[trace])
    seconds = time.perf_counter() - start
    scores = evaluate(lm, rows=512)
    # The first traced step from which recall stays at or above 0.95 at every distance.
    solved = next((r["step"] for i, r in enumerate(trace.rows)
                   if all(min(t["accuracy"].values()) >= 0.95 for t in trace.rows[i:])), None)
    return {"model": model, "config": config, "segment_blocks": segment_blocks,
            "eval_segment_blocks": eval_segment_blocks,
            "accuracy": scores, "steps_to_0.95": solved, "train_seconds": seconds,
            "trace": trace.rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="rec,slide")
    parser.add_argument("--needles", type=int, default=1)
    parser.add_argument("--train-distances", default="5")
    parser.add_argument("--eval", default="5")
    parser.add_argument("--segment-blocks", type=int, default=10)
    parser.add_argument("--eval-segment-blocks", type=int, default=None,
                        help="segment length of the evaluation (default: --segment-blocks); "
                             "e.g. train on segments holding whole episodes, evaluate across segments")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--optimizer", choices=("adam", "adafactor"), default="adam",
                        help="adam: constant --learning-rate; adafactor: the paper's recipe (Adafactor, "
                             "inverse square root decay after --warmup-steps, scaled by --learning-rate)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="adam's rate (default 3e-3); adafactor's scale of its curve (default 1.0)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="adafactor's warm-up (default: make_optimizer's, 1000 or a tenth of "
                             "a run shorter than 10,000 steps)")
    parser.add_argument("--state-lr-multiplier", type=float, default=1.0,
                        help="multiply the recurrent state path's learning rate (GroupedAdamW)")
    parser.add_argument("--state-vectors", type=int, default=8)
    parser.add_argument("--attention-scale-init", type=float, default=4.0)
    parser.add_argument("--config", default="{}",
                        help='JSON of extra backbone arguments, e.g. the paper\'s state initialisation '
                             '{"gate_bias_init": 0.0, "state_attention_scale_init": null}')
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace-every", type=int, default=250,
                        help="log and measure recall (256 episodes) every N steps")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.optimizer == "adafactor" and args.state_lr_multiplier != 1.0:
        parser.error("--state-lr-multiplier applies to adam only (Adafactor's steps are already "
                     f"relative to each parameter). Received: --state-lr-multiplier={args.state_lr_multiplier}")
    check_positive_int("segment_blocks", args.segment_blocks)
    check_positive_int("eval_segment_blocks", args.eval_segment_blocks, allow_none=True)
    if args.learning_rate is None:  # recorded in the results as used
        args.learning_rate = 1.0 if args.optimizer == "adafactor" else 3e-3

    results = []
    for model in args.models.split(","):
        result = run(model, args, args.dtype)
        results.append(result)
        print(f"{model:6s} " + "  ".join(f"{d}:{a:.3f}" for d, a in result["accuracy"].items())
              + f"  steps to 0.95: {result['steps_to_0.95']}  ({result['train_seconds']:.0f} s)",
              flush=True)
        if args.output:
            write(args, results)
    print(f"\nneedle recall, {args.needles} token(s), chance {1 / len(PAYLOAD):.3f}; "
          f"trained on distances {args.train_distances}, {args.steps} steps x {args.batch}")
    print("model   " + "  ".join(f"{d:>6}" for d in parse_range(args.eval)) + "  steps to 0.95")
    for r in results:
        print(f"{r['model']:7s} " + "  ".join(f"{a:6.3f}" for a in r["accuracy"].values())
              + f"  {r['steps_to_0.95'] or '-':>13}")


def write(args, results):
    report = {
        "date": datetime.date.today().isoformat(),
        "backend": keras.backend.backend(),
        "device": device_kind(),
        "args": vars(args),
        "results": results,
    }
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
