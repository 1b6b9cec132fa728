"""One epoch loop for every head: AdamW mini-batches, early stopping on the validation loss,
progress reports and cancellation checks between epochs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.training.data import TrainingCancelled
from service.training.metrics import topk_accuracy
from service.training.optim import AdamW, parameter_groups
from service.training.params import Params

ProgressCallback = Callable[[float, dict[str, Any]], None]
StopCheck = Callable[[], bool]
# An epoch counts as better only if it lowers the monitored loss by this much (scikit-learn's
# `tol`); otherwise a separable problem keeps "improving" by 1e-9 until the last epoch.
MIN_DELTA = 1e-4


@dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    train_loss: float  # mean training loss in the best epoch
    history: list[dict[str, Any]] = field(default_factory=list)


@torch.no_grad()
def weighted_top1(logits: Tensor, y: Tensor, class_weights: Tensor | None) -> float:
    """Top-1 accuracy with each example weighted by its class weight, as in the loss (balanced
    accuracy under `class_balance`): what `monitor="top1"` and the float solver's CV maximise."""
    w = torch.ones(len(y)) if class_weights is None else class_weights[y]
    hit = (logits.argmax(dim=1) == y).float()
    return float((w * hit).sum() / w.sum())


def fit(
    model: nn.Module,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    class_weights: Tensor,
    cfg: Params,
    generator: torch.Generator,
    progress_cb: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    monitor: str = "loss",
) -> FitResult:
    """Train `model` in place and leave it holding the weights of its best epoch.

    `data` is (x_train, y_train, x_val, y_val); with an empty validation part the training loss
    decides the best epoch. Weight decay (decoupled, AdamW) applies to `decay_parameters()` only,
    never to biases or scales. A model with `constrain_` (the binary head) gets it after each step.
    `monitor="top1"` picks the best epoch by validation accuracy instead of loss, each example
    weighted by its class weight as in the loss (so balanced accuracy under `class_balance`).
    """
    x_tr, y_tr, x_val, y_val = data
    opt = AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr)
    constrain = getattr(model, "constrain_", None)
    has_val = len(y_val) > 0
    best_loss, best_epoch, best_train_loss = float("inf"), 0, float("nan")
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    history: list[dict[str, Any]] = []
    since_best, epoch = 0, 0
    for epoch in range(1, cfg.epochs + 1):
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"stopped before epoch {epoch}")
        model.train()
        order = torch.randperm(len(y_tr), generator=generator)
        total, seen = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx], weight=class_weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if constrain is not None:
                constrain()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        train_loss = total / max(seen, 1)
        model.eval()
        entry: dict[str, Any] = {"epoch": epoch, "train_loss": round(train_loss, 6)}
        if has_val:
            with torch.no_grad():
                logits = model(x_val)
            val_loss = float(F.cross_entropy(logits, y_val, weight=class_weights))
            val_top1 = topk_accuracy(logits, y_val, 1)
            entry["val_loss"] = round(val_loss, 6)
            entry["val_top1"] = round(val_top1, 6)
            if monitor == "top1":
                monitored = -weighted_top1(logits, y_val, class_weights)
            else:
                monitored = val_loss
        else:
            monitored = train_loss
            entry["val_top1"] = None
        history.append(entry)
        if monitored < best_loss - MIN_DELTA:
            best_loss, best_epoch, best_train_loss, since_best = monitored, epoch, train_loss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
        if progress_cb is not None:
            progress_cb(epoch / cfg.epochs, entry)
        if cfg.patience and since_best >= cfg.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(
        best_epoch=best_epoch,
        epochs_run=epoch,
        stopped_early=epoch < cfg.epochs,
        train_loss=best_train_loss,
        history=history,
    )
