"""Data for long-document language modeling: sources, tokenizers, lane streaming.

This subpackage uses TensorFlow (tf.data, tensorflow-text); the modeling code in
`keras_brt.layers` and `keras_brt.models` does not.
"""

from keras_brt.data.sources import FolderSource, IterableSource, TFDSSource, stdlib_source
from keras_brt.data.streaming import lane_batches, lane_dataset
from keras_brt.data.tokenizers import ByteTokenizer, SentencePieceTokenizer, train_sentencepiece

__all__ = [
    "ByteTokenizer",
    "FolderSource",
    "IterableSource",
    "SentencePieceTokenizer",
    "TFDSSource",
    "lane_batches",
    "lane_dataset",
    "stdlib_source",
    "train_sentencepiece",
]
