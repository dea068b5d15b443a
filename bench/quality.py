"""Small-scale quality: does the ordering of the paper's Table 1 hold? One run, one table.

Trains the tiny Rec:fixed:skip, Slide and XL presets for the same number of training
tokens on the built-in code corpus (this Python's standard library; or a local PG19
with --data pg19 --data-dir DIR), then reports held-out bits per token with the state
carried from segment to segment and with it cleared at every segment, and the recall
accuracy on the synthetic long-range task of the test suite (a payload 40 tokens back,
beyond the stacked windows). Writes a PNG of the learning curves and a JSON under
bench/results/.

    KERAS_BACKEND=tensorflow python bench/quality.py --steps 150
"""

import argparse
import datetime
import json
import os
import platform
import time

import keras
import numpy as np

import keras_brt
from keras_brt import cli
from keras_brt.data import ByteTokenizer, lane_dataset
from keras_brt.training import BitsPerToken, make_optimizer
from tests.models.common import StepLosses  # the suite's per-step loss recorder

# (label, preset, segment length): equal tokens per step (XL trains on window-long segments).
MODELS = (("Rec:fixed:skip", "tiny_rec_fixed_skip", 512), ("Slide:4", "tiny_slide", 512),
          ("XL:64", "tiny_xl", 64))


def train(preset, segment_length, batch, steps, train_source, tokenizer):
    keras.utils.set_random_seed(0)
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM.from_preset(preset, vocabulary_size=264)
    lm.compile(optimizer=make_optimizer("adamw", steps), weighted_metrics=[BitsPerToken()],
               jit_compile=True)
    dataset = lane_dataset(train_source, tokenizer, batch, segment_length, repeat=True,
                           shuffle_buffer=1024, seed=0)
    record = StepLosses()
    start = time.perf_counter()
    lm.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[record])
    return lm, record.losses, time.perf_counter() - start


def recall_accuracy():
    """The test suite's long-range recall task, for the recurrent model and Slide."""
    from tests.models.test_learning import train_and_score  # the suite's task, reused as is

    return {"Rec:fixed:skip": train_and_score((-1,)), "Slide": train_and_score(())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--tokens-per-step", type=int, default=8 * 512)
    parser.add_argument("--data", default="stdlib")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--eval-documents", type=int, default=16)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    train_source, test_source = cli.resolve_data(args.data, args.data_dir, "*.txt", None)
    tokenizer = ByteTokenizer()
    rows, curves = [], {}
    for label, preset, segment in MODELS:
        batch = args.tokens_per_step // segment
        lm, losses, seconds = train(preset, segment, batch, args.steps, train_source, tokenizer)
        report, _ = cli.evaluate_run(lm, tokenizer, test_source, 8 * 512 // segment, segment,
                                     args.eval_documents)
        curves[label] = losses
        rows.append({"model": label, "preset": preset, "segment_length": segment, "batch": batch,
                     "train_seconds": seconds, "final_train_loss": float(np.mean(losses[-10:])),
                     **report})
        print(f"trained {label}: held-out {report['bits_per_token']:.4f} bits/token", flush=True)
    recall = recall_accuracy()

    print(f"\nbackend={keras.backend.backend()}, {args.steps} steps of {args.tokens_per_step} tokens, "
          f"bytes, held-out: {args.eval_documents} documents of {test_source.name}")
    print(f"{'model':<16}{'bits/token carried':>20}{'cleared':>10}{'train loss':>12}")
    for r in rows:
        print(f"{r['model']:<16}{r['bits_per_token']:>20.4f}{r['bits_per_token_state_cleared']:>10.4f}"
              f"{r['final_train_loss'] / np.log(2):>12.4f}")
    print("recall accuracy (chance 0.125): " + ", ".join(f"{k} {v:.3f}" for k, v in recall.items()))

    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    stem = f"quality_{args.data}_{keras.backend.backend()}"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for label, losses in curves.items():
        smooth = np.convolve(losses, np.ones(10) / 10, mode="valid") / np.log(2)
        axis.plot(np.arange(len(smooth)) + 10, smooth, label=label)
    axis.set_xlabel("training step")
    axis.set_ylabel("training bits per token (10-step mean)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(results, stem + ".png"), dpi=100)
    output = args.output or os.path.join(results, stem + ".json")
    with open(output, "w") as f:
        json.dump({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.node(), "backend": keras.backend.backend(), "keras": keras.__version__,
            "steps": args.steps, "tokens_per_step": args.tokens_per_step, "data": args.data,
            "eval_documents": args.eval_documents, "rows": rows, "recall_accuracy": recall,
            "learning_curves": curves,
        }, f, indent=2)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
