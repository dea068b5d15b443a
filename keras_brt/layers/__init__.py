"""Keras layers of the Block-Recurrent Transformer."""

from keras_brt.layers.block_recurrent_cell import BlockRecurrentCell
from keras_brt.layers.block_recurrent_rnn import BlockRecurrentRNN
from keras_brt.layers.common import FeedForward
from keras_brt.layers.flat_block_cell import FlatBlockRecurrentCell
from keras_brt.layers.gates import FixedGate, LSTMGate
from keras_brt.layers.relative_position import RelativePositionBias
from keras_brt.layers.sliding_window_layer import SlidingWindowTransformerLayer

__all__ = [
    "BlockRecurrentCell",
    "BlockRecurrentRNN",
    "FeedForward",
    "FixedGate",
    "FlatBlockRecurrentCell",
    "LSTMGate",
    "RelativePositionBias",
    "SlidingWindowTransformerLayer",
]
