"""Training utilities: metrics, optimizers, held-out evaluation, run directories."""

from keras_brt.training.callbacks import StepHistory, StepLosses
from keras_brt.training.evaluation import evaluate_bits_per_token, make_eval_step
from keras_brt.training.metrics import BitsPerToken, TokenAccuracy
from keras_brt.training.optimizers import GroupedAdamW, InverseSquareRootDecay, make_optimizer
from keras_brt.training.runs import RunCheckpoint, load_checkpoint, load_tokenizer

__all__ = [
    "BitsPerToken",
    "GroupedAdamW",
    "InverseSquareRootDecay",
    "RunCheckpoint",
    "StepHistory",
    "StepLosses",
    "TokenAccuracy",
    "evaluate_bits_per_token",
    "load_checkpoint",
    "load_tokenizer",
    "make_eval_step",
    "make_optimizer",
]
