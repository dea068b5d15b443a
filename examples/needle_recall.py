"""Is the recurrent state used? Train a small model to recall a token many blocks back.

Every episode hides one random token (1 of 22) among filler in its first block and asks for it
`--distance` blocks later (`keras_brt.data.needles`). The sliding window of a 2-layer model
reaches 2 blocks back, so only the recurrent state can answer; segments of `--segment-blocks`
blocks make the state cross segment boundaries, where no gradient flows, on the way. The same
training runs for the recurrent model, for Slide (no state) and, with `--paper-init`, for the
recurrent model with the paper's state initialisation (it stays at chance):

    python examples/needle_recall.py                 # Rec ~1.0, Slide at chance (0.045)
    python examples/needle_recall.py --paper-init    # adds Rec with the paper's initialisation
"""

import argparse

import keras
import numpy as np

import keras_brt
from keras_brt.data import needle_lanes, needle_recall_accuracy
from keras_brt.data.needles import PAYLOAD, VOCABULARY_SIZE

PAPER_INIT = {"gate_bias_init": 0.0, "state_attention_scale_init": None}


def train_and_recall(recurrent_layers, distance=6, segment_blocks=4, steps=800, lanes=32,
                     seed=0, **overrides):
    """Trains on episodes of 2..`distance` blocks; returns recall at `distance` blocks."""
    keras.utils.set_random_seed(seed)
    backbone = keras_brt.models.BlockRecurrentTransformerBackbone(
        VOCABULARY_SIZE, num_layers=2, hidden_dim=64, num_heads=4, head_dim=16,
        intermediate_dim=256, block_size=8, num_state_vectors=8,
        recurrent_layers=recurrent_layers, attention_scale_init=4.0, **overrides)
    lm = keras_brt.models.BlockRecurrentTransformerCausalLM(backbone)
    lm.compile(optimizer=keras.optimizers.Adam(3e-3, global_clipnorm=1.0), jit_compile=True)
    rng = np.random.default_rng(seed)
    x, y, weights = needle_lanes(rng, steps, lanes, range(2, distance + 1), block_size=8,
                                 segment_blocks=segment_blocks)
    # shuffle=False: each batch row is a lane whose state is carried to the next batch.
    lm.fit(x, y, sample_weight=weights, batch_size=lanes, shuffle=False, verbose=0)
    return needle_recall_accuracy(lm, np.random.default_rng(seed + 1), distance, block_size=8,
                                  segment_blocks=segment_blocks)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distance", type=int, default=6, help="blocks between needle and query")
    parser.add_argument("--segment-blocks", type=int, default=4, help="blocks per training segment")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--paper-init", action="store_true",
                        help="also train Rec with the paper's state initialisation")
    args = parser.parse_args(argv)
    runs = {"Rec:fixed:skip": ((-1,), {}), "Slide": ((), {})}
    if args.paper_init:
        runs["Rec, paper's init"] = ((-1,), PAPER_INIT)
    print(f"recall of one token {args.distance} blocks back (chance {1 / len(PAYLOAD):.3f})")
    results = {}
    for name, (layers, overrides) in runs.items():
        results[name] = train_and_recall(layers, args.distance, args.segment_blocks, args.steps,
                                         **overrides)
        print(f"  {name:<20} {results[name]:.3f}", flush=True)
    return results


if __name__ == "__main__":
    main()
