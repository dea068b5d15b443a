"""Training utilities: metrics and held-out evaluation."""

from keras_brt.training.evaluation import evaluate_bits_per_token, make_eval_step
from keras_brt.training.metrics import BitsPerToken

__all__ = ["BitsPerToken", "evaluate_bits_per_token", "make_eval_step"]
