"""The float head's default solver: L2-regularised logistic regression, full batch, by L-BFGS.

The linear-probe protocol of representation-learning papers (e.g. CLIP's): the loss is convex, so
L-BFGS reaches its optimum in tens of full passes with no learning rate, batch size or early
stopping to tune, and the only choice left, the L2 penalty, is made by k-fold cross-validation on
the training part. With a few hundred images the validation split that early stopping needs
makes the answer depend on the seed; here every training image is used for the fit. What this
solver gained over the AdamW epochs it replaced, on the same features and seeds, is recorded in
docs/distillation.md ("What transfer says", Head training) and bench/results/transfer.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from service.training.architectures import FloatHead
from service.training.data import TrainingCancelled
from service.training.loop import (
    MIN_DELTA,
    FitResult,
    ProgressCallback,
    StopCheck,
    weighted_top1,
)
from service.training.metrics import topk_accuracy
from service.training.optim import lbfgs
from service.training.params import FloatParams

# Penalties tried, strongest first: each fold's solution warm-starts the next (weaker) penalty.
L2_GRID = (1.0, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4)
DEFAULT_L2 = 0.01  # when there are too few examples to cross-validate
HISTORY_SIZE = 20


def minimize(
    head: FloatHead, x: Tensor, y: Tensor, weights: Tensor, l2: float, iters: int
) -> float:
    """Weighted cross-entropy + l2 * |W|^2 (bias free) on standardised features, in place, from
    the head's current weights. Returns the weighted cross-entropy (without the penalty) there."""
    weight, bias = head.linear.weight, head.linear.bias
    n_w = weight.numel()
    with torch.no_grad():
        z = (x - head.mean) / head.std

    def f(theta: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            w, b = theta[:n_w].view_as(weight), theta[n_w:]
            loss = F.cross_entropy(z @ w.T + b, y, weight=weights) + l2 * w.square().sum()
            (grad,) = torch.autograd.grad(loss, theta)
        return loss.detach(), grad

    with torch.no_grad():
        theta = lbfgs(f, torch.cat([weight.flatten(), bias]), iters, HISTORY_SIZE)
        weight.copy_(theta[:n_w].view_as(weight))
        bias.copy_(theta[n_w:])
        return float(F.cross_entropy(head(x), y, weight=weights))


def stratified_folds(y: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Fold index (0..k-1) per example, each label dealt round-robin in a random order."""
    fold = torch.empty_like(y)
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        fold[idx] = torch.arange(len(idx)) % k
    return fold


def fit_lbfgs(
    head: FloatHead,
    x: Tensor,
    y: Tensor,
    class_weights: Tensor,
    cfg: FloatParams,
    generator: torch.Generator,
    progress_cb: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> FitResult:
    """Pick the penalty by k-fold cross-validation on (x, y), then fit `head` on all of it.

    History: one entry per penalty tried, with the mean training loss of its folds and the
    out-of-fold `val_loss`/`val_top1`; `best_epoch` is the 1-based index of the one chosen (the
    best out-of-fold accuracy, weighted like the loss; ties go to the stronger penalty). From
    `cfg.holdout_from` examples only the first fold is held out. A fixed `cfg.l2` skips the search.
    """
    k = min(cfg.folds, len(y))
    search = cfg.l2 is None and k >= 2
    history: list[dict[str, object]] = []
    best_i, best_score = 1, float("inf")

    def check_stop(what: str) -> None:
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"stopped before {what}")

    if search:
        fold = stratified_folds(y, k, generator)
        used = 1 if len(y) >= cfg.holdout_from else k
        held = fold < used  # every example, or the first fold only
        y_val = y[held]
        heads = [FloatHead(head.mean, head.std, head.linear.out_features) for _ in range(used)]
        for i, l2 in enumerate(L2_GRID, start=1):
            check_stop(f"penalty {l2}")
            logits = torch.empty(len(y), head.linear.out_features)
            train_loss = 0.0
            for f, fold_head in enumerate(heads):  # warm start: the previous penalty's solution
                tr, te = fold != f, fold == f
                loss = minimize(fold_head, x[tr], y[tr], class_weights, l2, cfg.epochs)
                train_loss += loss / used
                with torch.no_grad():
                    logits[te] = fold_head(x[te])
            logits = logits[held]
            score = -weighted_top1(logits, y_val, class_weights)
            entry: dict[str, object] = {
                "epoch": i,
                "l2": l2,
                "train_loss": round(train_loss, 6),
                "val_loss": round(float(F.cross_entropy(logits, y_val, weight=class_weights)), 6),
                "val_top1": round(topk_accuracy(logits, y_val, 1), 6),
                "n_val": len(y_val),
            }
            history.append(entry)
            if score < best_score - MIN_DELTA:
                best_i, best_score = i, score
            if progress_cb is not None:
                progress_cb(i / (len(L2_GRID) + 1), entry)
    l2 = L2_GRID[best_i - 1] if search else (DEFAULT_L2 if cfg.l2 is None else cfg.l2)
    check_stop("the final fit")
    loss = minimize(head, x, y, class_weights, l2, cfg.epochs)
    if not search:
        history.append({"epoch": 1, "l2": l2, "train_loss": round(loss, 6), "val_top1": None})
    if progress_cb is not None:
        progress_cb(1.0, history[-1])
    head.eval()
    return FitResult(
        best_epoch=best_i,
        epochs_run=len(history),
        stopped_early=False,
        train_loss=loss,
        history=history,
    )
