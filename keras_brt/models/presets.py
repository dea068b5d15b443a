"""Architecture presets: the paper's Table 1 models and tiny sizes for tests and demos.

Each preset is a backbone config plus metadata. `segment_length` is the number of
tokens per lane per training step the paper pairs with the model (4096 for the
Slide and Rec models; XL:n trains on segments of n tokens, with the batch scaled
up so that every model sees the same number of tokens per step).

The paper sizes follow meliad's `size/medium_150M.gin`: 12 layers, D = 1024,
8 heads of 128, MLP 4096, the T5 SentencePiece vocabulary padded to 32128,
W = 512, S = 512, the recurrent layer at index -3 (the 10th of 12).

The recurrent presets initialise the state as the backbone does by default
(`gate_bias_init=2.0`, `state_attention_scale_init="auto"`), not as the paper
does: with the paper's initialisation the state learns almost nothing at the
scales one GPU trains (bench/results/NOTES.md, "Making the state learn").
Pass `gate_bias_init=0.0, state_attention_scale_init=None` to `from_preset` for
the paper's.
"""

import os  # the only import: `keras-brt --help` reads this file without importing Keras

_PAPER = {
    "vocabulary_size": 32128,
    "num_layers": 12,
    "hidden_dim": 1024,
    "num_heads": 8,
    "head_dim": 128,
    "intermediate_dim": 4096,
    "block_size": 512,
    "num_state_vectors": 512,
    "recurrent_layers": (-3,),
    "gate": "fixed",
    "state_mlp": "skip",
    "dropout": 0.05,
}

# Tiny sizes: byte-level vocabulary (256 bytes + 3 specials, padded to 264).
# The logit scale starts at 4 rather than meliad's 1.0 because small runs train
# with Adam, which grows the learned scale far more slowly than Adafactor.
_TINY = {
    "vocabulary_size": 264,
    "num_layers": 4,
    "hidden_dim": 128,
    "num_heads": 4,
    "head_dim": 32,
    "intermediate_dim": 512,
    "block_size": 64,
    "num_state_vectors": 64,
    "recurrent_layers": (-2,),
    "gate": "fixed",
    "state_mlp": "skip",
    "dropout": 0.0,
    "attention_scale_init": 4.0,
}


def _preset(base, description, segment_length, **changes):
    return {
        "config": {**base, **changes},
        "metadata": {"description": description, "segment_length": segment_length},
    }


PRESETS = {
    # The paper's models (Table 1), all at the same width.
    "rec_fixed_skip": _preset(_PAPER, "Rec:fixed:skip, the paper's main model.", 4096),
    "rec_fixed_single": _preset(_PAPER, "Rec:fixed:single.", 4096, state_mlp="single"),
    "rec_fixed_dual": _preset(_PAPER, "Rec:fixed:dual.", 4096, state_mlp="dual"),
    "rec_lstm_skip": _preset(_PAPER, "Rec:lstm:skip.", 4096, gate="lstm"),
    "rec_lstm_single": _preset(_PAPER, "Rec:lstm:single.", 4096, gate="lstm", state_mlp="single"),
    "rec_lstm_dual": _preset(_PAPER, "Rec:lstm:dual.", 4096, gate="lstm", state_mlp="dual"),
    "slide_12": _preset(_PAPER, "Slide:12, 12 sliding-window layers, no recurrence.", 4096,
                        recurrent_layers=()),
    "slide_13": _preset(_PAPER, "Slide:13, 13 sliding-window layers, no recurrence.", 4096,
                        num_layers=13, recurrent_layers=()),
    "xl_512": _preset(_PAPER, "XL:512, Transformer-XL with window = segment = 512.", 512,
                      recurrent_layers=()),
    "xl_1024": _preset(_PAPER, "XL:1024, window = segment = 1024.", 1024,
                       block_size=1024, recurrent_layers=()),
    "xl_2048": _preset(_PAPER, "XL:2048, window = segment = 2048.", 2048,
                       block_size=2048, recurrent_layers=()),
    # Tiny sizes for the quick start, tests and CPU benchmarks.
    "tiny_rec_fixed_skip": _preset(_TINY, "Tiny Rec:fixed:skip (4 layers, D=128).", 512),
    "tiny_rec_lstm_skip": _preset(_TINY, "Tiny Rec:lstm:skip (4 layers, D=128).", 512,
                                  gate="lstm"),
    "tiny_slide": _preset(_TINY, "Tiny Slide:4, no recurrence.", 512, recurrent_layers=()),
    "tiny_xl": _preset(_TINY, "Tiny XL:64, window = segment = 64.", 64, recurrent_layers=()),
}


def get_preset(name):
    """Returns the preset dict for `name`, or raises a `ValueError` listing them."""
    if name not in PRESETS and isinstance(name, (str, os.PathLike)) and os.path.isdir(name):
        raise ValueError(
            "`preset` names a folder, but not a preset folder: it has no config.json (a preset "
            "folder holds config.json, model.weights.h5, metadata.json and tokenizer.json, as "
            f"save_to_preset writes them). Received: preset={name!r}"
        )
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset. Available: {sorted(PRESETS)}. Received: preset={name!r}"
        )
    return PRESETS[name]
