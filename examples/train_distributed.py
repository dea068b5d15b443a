"""Train a Block-Recurrent Transformer under any tf.distribute strategy, one host or many.

The same script runs on one machine and on a cluster; only `--strategy` and the
environment change:

    # this host's devices (GPUs, or the CPU):
    KERAS_BACKEND=tensorflow python examples/train_distributed.py --strategy mirrored
    # 2 workers on this machine, each with TF_CONFIG naming 127.0.0.1 ports:
    python -m keras_brt.distribute --workers 2 -- python examples/train_distributed.py --strategy multi_worker
    # several hosts: start the same command on every host with its own TF_CONFIG (docs/distribution.md)
    # a Cloud TPU VM:
    python examples/train_distributed.py --strategy tpu --tpu local --dtype-policy mixed_bfloat16

Every replica carries the state of its own lanes; each input pipeline reads its
own shard of the documents (`distribute_lanes`); the forward and backward pass is
XLA-compiled per replica. Worker 0 (the chief) writes the final model.
"""

import argparse
import json
import os

import keras

import keras_brt
from keras_brt import data, distribute, training


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="auto", choices=distribute.STRATEGIES)
    parser.add_argument("--tpu", default=None)
    parser.add_argument("--data", default="stdlib", help="'stdlib' or a folder of .txt files")
    parser.add_argument("--preset", default="tiny_rec_fixed_skip")
    parser.add_argument("--global-batch-size", type=int, default=8, help="lanes over all replicas")
    parser.add_argument("--segment-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtype-policy", default="float32")
    parser.add_argument("--output", default=None, help="where the chief saves model.keras")
    args = parser.parse_args(argv)

    strategy = distribute.get_strategy(args.strategy, tpu=args.tpu)
    source = data.stdlib_source("train") if args.data == "stdlib" else data.FolderSource(args.data)
    tokenizer = data.ByteTokenizer()
    keras.utils.set_random_seed(0)  # The same initial weights on every worker.
    with strategy.scope():
        lm = keras_brt.models.BlockRecurrentTransformerCausalLM.from_preset(
            args.preset, vocabulary_size=264, dtype=args.dtype_policy)
        lm.build({"token_ids": (args.global_batch_size, args.segment_length)})
        lm.compile(optimizer=training.make_optimizer("adamw", steps=args.steps),
                   weighted_metrics=[training.BitsPerToken()], jit_compile=True)
    dataset = distribute.distribute_lanes(
        strategy,
        lambda batch, context: data.lane_dataset(source, tokenizer, batch, args.segment_length,
                                                 repeat=True, input_context=context),
        global_batch_size=args.global_batch_size,
        vocabulary_size=lm.backbone.vocabulary_size,  # ids outside it stop fit with a ValueError
    )
    history = lm.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0)
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    chief = config.get("task", {}).get("index", 0) == 0
    result = {"replicas": strategy.num_replicas_in_sync, "strategy": type(strategy).__name__,
              "loss": history.history["loss"][-1], "chief": chief}
    if chief and args.output:
        os.makedirs(args.output, exist_ok=True)
        lm.save(os.path.join(args.output, "model.keras"))
    print("RESULT " + json.dumps(result), flush=True)
    return lm, result


if __name__ == "__main__":
    main()
