"""Pure head trainers: tensors in, weights and metrics out. No database, no HTTP."""

from service.training.data import InvalidTrainingData, TrainingCancelled
from service.training.params import HEAD_TYPES, InvalidParams, parse_params
from service.training.scoring import score
from service.training.trainer import TrainedHead, train_head

__all__ = [
    "HEAD_TYPES",
    "InvalidParams",
    "InvalidTrainingData",
    "TrainedHead",
    "TrainingCancelled",
    "parse_params",
    "score",
    "train_head",
]
