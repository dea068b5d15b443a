"""Tiny model configurations and helpers shared by the model and training tests."""

import numpy as np

import keras_brt
from keras_brt.training import StepLosses  # noqa: F401  (the tests' per-step loss recorder)

V, W = 40, 4
TINY = dict(
    vocabulary_size=V,
    num_layers=3,
    hidden_dim=16,
    num_heads=2,
    head_dim=8,
    intermediate_dim=32,
    block_size=W,
    num_state_vectors=3,
    recurrent_layers=(1,),
)


def make_lm(**overrides):
    backbone = keras_brt.models.BlockRecurrentTransformerBackbone(**{**TINY, **overrides})
    return keras_brt.models.BlockRecurrentTransformerCausalLM(backbone)


def token_ids(batch=2, length=24, seed=0):
    return np.random.default_rng(seed).integers(0, V, (batch, length)).astype("int32")


def numpy_state(state):
    return {k: np.asarray(v) for k, v in state.items()}


def make_lm_favouring(favoured, vocabulary_size=264, avoided=(2,), seed=5):
    """A tiny causal LM whose next-token logits favour the `favoured` ids by about 20 over
    every other id, whatever the text, and put the `avoided` ids about 20 below them.

    The tied embedding table's first column is 40 for the favoured ids, 0 for the avoided
    ones and 20 for the rest: it dominates the residual stream (every layer adds O(1) to
    it), so the final RMS-normalised hidden state points along it and the logit of id v
    is about `embeddings[v, 0]`. Default: the byte presets' 264 ids, EOS avoided (so that
    rows run to `max_length`).
    """
    import keras

    keras.utils.set_random_seed(seed)
    lm = make_lm(vocabulary_size=vocabulary_size)
    lm.build()
    table = np.array(lm.backbone.token_embedding.embeddings)
    table[:, 0] = 20.0
    table[list(favoured), 0] = 40.0
    table[list(avoided), 0] = 0.0
    lm.backbone.token_embedding.embeddings.assign(table)
    return lm


def record_decoding(monkeypatch):
    """The id sequences `ByteTokenizer.detokenize` is given from now on, in order."""
    from keras_brt.data import ByteTokenizer

    seen, detokenize = [], ByteTokenizer.detokenize

    def recording(self, ids):
        seen.append(np.asarray(ids))
        return detokenize(self, ids)

    monkeypatch.setattr(ByteTokenizer, "detokenize", recording)
    return seen
