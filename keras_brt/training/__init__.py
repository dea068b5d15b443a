"""Training utilities: metrics, optimizers, held-out evaluation, run directories and whole runs."""

from keras_brt.training.callbacks import StepHistory, StepLosses
from keras_brt.training.data_choice import (check_held_out_size, describe_data, describe_held_out,
                                             report_data, report_encoding, resolve_data)
from keras_brt.training.evaluation import evaluate_bits_per_token, make_eval_step
from keras_brt.training.metrics import BitsPerToken, TokenAccuracy
from keras_brt.training.optimizers import GroupedAdamW, InverseSquareRootDecay, make_optimizer
from keras_brt.training.run_evaluation import evaluate_run, evaluate_run_dir
from keras_brt.training.run_models import export_run, generate_from_run
from keras_brt.training.run_training import ProgressLog, train_run
from keras_brt.training.runs import RunCheckpoint, load_checkpoint, load_tokenizer

__all__ = [
    "BitsPerToken",
    "GroupedAdamW",
    "InverseSquareRootDecay",
    "ProgressLog",
    "RunCheckpoint",
    "StepHistory",
    "StepLosses",
    "TokenAccuracy",
    "check_held_out_size",
    "describe_data",
    "describe_held_out",
    "evaluate_bits_per_token",
    "evaluate_run",
    "evaluate_run_dir",
    "export_run",
    "generate_from_run",
    "load_checkpoint",
    "load_tokenizer",
    "make_eval_step",
    "make_optimizer",
    "report_data",
    "report_encoding",
    "resolve_data",
    "train_run",
]
