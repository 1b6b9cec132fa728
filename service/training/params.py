"""Hyper-parameters of each head type, validated before a job is queued.

The same pydantic classes validate `params` in `POST /v1/jobs` (so a typo is a 422, not a failed
job) and configure the trainers. Unknown keys are refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

HeadType = Literal["float", "binary", "mlp"]
HEAD_TYPES: tuple[str, ...] = ("float", "binary", "mlp")


class InvalidParams(ValueError):
    """`params` do not fit the head type (unknown key, wrong type or out of range)."""


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Upper bound on passes over the training split; early stopping usually ends sooner.
    epochs: int = Field(200, ge=1, le=100_000)
    # Epochs without a better validation loss before stopping; 0 turns early stopping off.
    patience: int = Field(10, ge=0, le=100_000)
    batch_size: int = Field(256, ge=1, le=65_536)
    lr: float = Field(1e-2, gt=0.0, le=10.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=10.0)
    # Weight each class's loss by N / (C * n_c) so a rare label is not drowned out.
    class_balance: bool = True
    # What picks the best epoch on the validation split (early stopping and the weights kept).
    monitor: Literal["top1", "loss"] = "loss"


class FloatParams(_Common):
    """Paper (b): a floating-point last layer, multinomial logistic regression."""

    # "lbfgs": full batch, L2 penalty chosen by k-fold cross-validation (service/training/lbfgs.py;
    # `epochs` bounds the L-BFGS iterations per fit, batch_size/lr/patience/monitor are unused).
    # "adam": mini-batch AdamW with early stopping on the validation part (the earlier default).
    solver: Literal["lbfgs", "adam"] = "lbfgs"
    # Fixed L2 penalty on the weights (lbfgs); None chooses it by cross-validation.
    l2: float | None = Field(None, ge=0.0, le=100.0)
    folds: int = Field(5, ge=2, le=20)
    # From this many examples one fold (a fifth by default) judges each penalty instead of all k:
    # k times fewer fits, and the largest ones; time and top-1 of both ways are in
    # bench/results/training.md.
    holdout_from: int = Field(10_000, ge=2)

    # Big batches: a linear head needs few, cheap steps (timings: bench/results/training.md).
    batch_size: int = Field(1024, ge=1, le=65_536)

    # Train on z-scored features; the scaling is folded back into (weight, bias) on export.
    standardize: bool = True
    # Validation accuracy, not log-loss: with hundreds of features and few images the loss is
    # lowest after an epoch or two, long before accuracy peaks, as the head grows confident
    # (docs/distillation.md, "What transfer says", Head training).
    monitor: Literal["top1", "loss"] = "top1"


class BinaryParams(_Common):
    """Paper (a): binary weights on the sign bits, BinaryNet training with Adam."""

    patience: int = Field(20, ge=0, le=100_000)
    # L2 on latent weights only pulls them to 0 where signs flip at random; off by default.
    weight_decay: float = Field(0.0, ge=0.0, le=10.0)
    # Refit the per-class (scale, bias) by L-BFGS with the binary weights frozen (convex).
    calibrate: bool = True
    # The loss mostly tracks the growing scale, which calibration refits afterwards anyway.
    monitor: Literal["top1", "loss"] = "top1"


class MlpParams(_Common):
    """Paper's future work: retrain more than the last layer (one float ReLU hidden layer)."""

    hidden: int = Field(256, ge=1, le=8192)
    batch_size: int = Field(512, ge=1, le=65_536)
    lr: float = Field(2e-3, gt=0.0, le=10.0)
    standardize: bool = True


Params = FloatParams | BinaryParams | MlpParams
_MODELS: dict[str, type[_Common]] = {"float": FloatParams, "binary": BinaryParams, "mlp": MlpParams}


def parse_params(head_type: str, params: dict[str, object] | None) -> Params:
    """Validate `params` for `head_type`, filling defaults; `InvalidParams` says what is wrong."""
    model = _MODELS.get(head_type)
    if model is None:
        raise InvalidParams(f"unknown head_type {head_type!r}; expected one of {list(HEAD_TYPES)}")
    try:
        return model.model_validate(params or {})  # type: ignore[return-value]
    except ValidationError as exc:
        parts = [
            f"{'.'.join(str(p) for p in err['loc']) or 'params'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise InvalidParams(f"invalid params for {head_type} head: " + "; ".join(parts)) from None
