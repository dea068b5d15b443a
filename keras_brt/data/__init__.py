"""Data for long-document language modeling: sources, tokenizers, the causal LM's
preprocessor (strings in), lane streaming,
and the synthetic needle-recall task (`needles`).

This subpackage uses TensorFlow (tf.data, tensorflow-text); the modeling code in
`keras_brt.layers` and `keras_brt.models` does not. Its names are imported on first
use, so the document sources and the NumPy `lane_batches` also work where
TensorFlow is not installed (a GPU machine running the JAX backend).
"""

import importlib

_WHERE = {
    "FolderSource": "sources",
    "IterableSource": "sources",
    "TFDSSource": "sources",
    "stdlib_source": "sources",
    "lane_batches": "streaming",
    "lane_dataset": "streaming",
    "BlockRecurrentTransformerCausalLMPreprocessor": "preprocessing",
    "ByteTokenizer": "tokenizers",
    "SentencePieceTokenizer": "tokenizers",
    "train_sentencepiece": "tokenizers",
    "needle_episode": "needles",
    "needle_lanes": "needles",
    "needle_recall_accuracy": "needles",
}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'keras_brt.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"keras_brt.data.{_WHERE[name]}"), name)


def __dir__():
    return sorted(list(globals()) + list(_WHERE))


__all__ = [
    "BlockRecurrentTransformerCausalLMPreprocessor",
    "ByteTokenizer",
    "FolderSource",
    "IterableSource",
    "SentencePieceTokenizer",
    "TFDSSource",
    "lane_batches",
    "lane_dataset",
    "needle_episode",
    "needle_lanes",
    "needle_recall_accuracy",
    "stdlib_source",
    "train_sentencepiece",
]
