"""Compose the Block-Recurrent cell with ordinary Keras layers.

Two ways to use `keras_brt.layers.BlockRecurrentCell` outside the packaged
language model:

1. `keras_brt.layers.BlockRecurrentRNN` inside a Functional model: embed
   tokens, run the recurrent layer over blocks, and classify each sequence from
   the final *state vectors* (the model's memory), with Keras pooling and Dense
   layers on top.
2. Plain `keras.layers.RNN(cell)` on pre-blocked input `(B, N, W, D)`, the way
   any Keras RNN cell is used.

The task needs memory: a label token appears only in the first block, followed
by blocks of noise; the label must be read from the state after the last block.

    python examples/rnn_composition.py [--steps 150]
"""

import argparse

import keras
import numpy as np

import keras_brt

BLOCK, BLOCKS, VOCAB, CLASSES = 8, 6, 32, 8


def make_data(rng, n):
    labels = rng.integers(0, CLASSES, n)
    tokens = rng.integers(CLASSES, VOCAB, (n, BLOCK * BLOCKS))
    tokens[:, :BLOCK] = labels[:, None]  # the only evidence, 40+ tokens back
    return tokens.astype("int32"), labels.astype("int32")


def build_classifier():
    cell = keras_brt.layers.BlockRecurrentCell(
        hidden_dim=32, num_heads=4, head_dim=8, block_size=BLOCK, num_state_vectors=4,
        intermediate_dim=64, attention_scale_init=4.0,
    )
    token_ids = keras.Input((BLOCK * BLOCKS,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(VOCAB, 32)(token_ids)  # (B, T, 32)
    outputs, state, keys, values = keras_brt.layers.BlockRecurrentRNN(cell, return_state=True)(x)
    memory = keras.layers.GlobalAveragePooling1D()(keras.layers.LayerNormalization()(state))  # (B, 32)
    logits = keras.layers.Dense(CLASSES)(memory)
    return keras.Model(token_ids, logits)


def plain_rnn_demo():
    """The same cell inside plain keras.layers.RNN, on blocks (B, N, W, D)."""
    cell = keras_brt.layers.BlockRecurrentCell(32, 4, 8, block_size=BLOCK, num_state_vectors=4)
    rnn = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    blocks = np.random.default_rng(0).normal(size=(2, BLOCKS, BLOCK, 32)).astype("float32")
    outputs, state, keys, values = rnn(blocks)  # learned initial state by default
    outputs2, *_ = rnn(blocks, initial_state=[state, keys, values])  # carry it on
    return outputs.shape, state.shape, outputs2.shape


def main(steps=150, batch=64):
    keras.utils.set_random_seed(0)
    model = build_classifier()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=True,
    )
    x, y = make_data(np.random.default_rng(0), steps * batch)
    history = model.fit(x, y, batch_size=batch, epochs=1, verbose=2)
    x_test, y_test = make_data(np.random.default_rng(1), 512)
    accuracy = float((np.argmax(model.predict(x_test, verbose=0), -1) == y_test).mean())
    print(f"held-out accuracy from the final state: {accuracy:.3f} (chance {1 / CLASSES:.3f})")
    print("plain keras.layers.RNN shapes:", plain_rnn_demo())
    return accuracy, history.history["loss"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    main(parser.parse_args().steps)
