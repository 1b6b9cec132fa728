"""`train_head`: features and labels in, registry-ready weights and metrics out (no DB, no HTTP)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from extractor.quantizers import sign
from service.training.architectures import BinaryHead, FloatHead, MlpHead
from service.training.data import (
    check_inputs,
    class_weights,
    standardizer,
    stratified_split,
    unpack_bits,
)
from service.training.lbfgs import fit_lbfgs
from service.training.loop import ProgressCallback, StopCheck, fit
from service.training.metrics import classification_report
from service.training.optim import AdamW
from service.training.params import BinaryParams, FloatParams, MlpParams, Params, parse_params
from service.training.scoring import score

CALIBRATION_STEPS = 200


@dataclass(frozen=True)
class TrainedHead:
    weights: dict[str, Tensor]  # layout of service/heads/headfile.py for the head type
    metrics: dict[str, Any]  # JSON-ready


def train_head(
    head_type: str,
    X_float: np.ndarray | None,
    X_bits: np.ndarray | None,
    y: np.ndarray,
    labels: list[str],
    params: dict[str, Any] | None = None,
    seed: int = 0,
    validation_fraction: float = 0.2,
    progress_cb: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    *,
    feature_dim: int | None = None,
) -> TrainedHead:
    """Train one head. Same inputs and seed -> bit-identical weights.

    X_float (N, D) float32 feeds `float` and `mlp`; X_bits (N, ceil(D/8)) uint8 packed sign bits
    feed `binary` (D from X_float, or `feature_dim` when X_float is None). y (N,) indexes
    `labels`. Randomness comes from one local `torch.Generator`, never the global RNG, so heads
    trained in parallel threads stay deterministic. Raises `InvalidParams`,
    `InvalidTrainingData` or `TrainingCancelled` (when `should_stop()` turns True).
    """
    started = time.perf_counter()
    cfg = parse_params(head_type, params)
    y = np.asarray(y, dtype=np.int64)
    if head_type == "binary":
        dim_hint = X_float.shape[1] if X_float is not None else feature_dim
        _, dim = check_inputs(None, X_bits, y, labels, feature_dim=dim_hint)
    else:
        _, dim = check_inputs(X_float, None, y, labels)

    generator = torch.Generator().manual_seed(int(seed))
    yt = torch.from_numpy(y)
    split = stratified_split(yt, validation_fraction, generator)
    if head_type == "binary":
        assert X_bits is not None
        x = unpack_bits(X_bits, dim)
    else:
        assert X_float is not None
        x = torch.from_numpy(np.ascontiguousarray(X_float, dtype=np.float32))
    x_tr, y_tr, x_val, y_val = x[split.train], yt[split.train], x[split.val], yt[split.val]
    weights_c = class_weights(y_tr, len(labels), cfg.class_balance)

    model = _build(head_type, cfg, x_tr, y_tr, len(labels), generator)
    if isinstance(model, FloatHead) and isinstance(cfg, FloatParams) and cfg.solver == "lbfgs":
        result = fit_lbfgs(model, x_tr, y_tr, weights_c, cfg, generator, progress_cb, should_stop)
    else:
        result = fit(
            model,
            (x_tr, y_tr, x_val, y_val),
            weights_c,
            cfg,
            generator,
            progress_cb,
            should_stop,
            monitor=cfg.monitor,
        )
    if isinstance(model, BinaryHead) and isinstance(cfg, BinaryParams) and cfg.calibrate:
        _calibrate(model, x_tr, y_tr, weights_c)
    weights = model.export()

    metrics = _metrics(head_type, weights, X_float, X_bits, y, labels, split, dim)
    metrics.update(
        head_type=head_type,
        train_loss=round(result.train_loss, 6),
        history=result.history,
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        stopped_early=result.stopped_early,
        n_train=len(split.train),
        n_val=len(split.val),
        feature_dim=dim,
        seed=int(seed),
        validation_fraction=validation_fraction,
        params=cfg.model_dump(),
        train_seconds=round(time.perf_counter() - started, 3),
    )
    return TrainedHead(weights=weights, metrics=metrics)


def _build(
    head_type: str, cfg: Params, x_tr: Tensor, y_tr: Tensor, n_classes: int, g: torch.Generator
) -> FloatHead | BinaryHead | MlpHead:
    if head_type == "float":
        return FloatHead(*standardizer(x_tr, cfg.standardize), n_classes)  # type: ignore[union-attr]
    if head_type == "mlp":
        assert isinstance(cfg, MlpParams)
        return MlpHead(*standardizer(x_tr, cfg.standardize), cfg.hidden, n_classes, g)
    return BinaryHead(_centroid_init(x_tr, y_tr, n_classes, g))


def _centroid_init(x_pm: Tensor, y: Tensor, n_classes: int, g: torch.Generator) -> Tensor:
    """Latent weights = each class's mean ±1 feature minus the overall mean, scaled into [-1, 1].

    sign() of it is already a nearest-centroid classifier in Hamming space, so Adam starts from a
    sensible binary head instead of random signs; tiny noise breaks exact zeros.
    """
    overall = x_pm.mean(dim=0)
    init = torch.zeros(n_classes, x_pm.shape[1])
    for c in range(n_classes):
        members = x_pm[y == c]
        if len(members):
            init[c] = members.mean(dim=0) - overall
    init = init / init.abs().amax(dim=1, keepdim=True).clamp_min(1e-6) * 0.5
    return (init + 1e-3 * torch.randn(init.shape, generator=g)).clamp(-1.0, 1.0)


def _calibrate(model: BinaryHead, x_tr: Tensor, y_tr: Tensor, weights_c: Tensor) -> None:
    """Refit per-class (scale, bias) with the binary weights frozen, full batch: the weighted
    cross-entropy is convex in them, so this finds the calibrated optimum on the training data."""
    with torch.no_grad():
        dots = x_tr @ sign(model.latent).t() / model.dim  # (N, C) in [-1, 1]: well conditioned
    scale = (model.scale.detach() * model.dim).clone().requires_grad_(True)
    bias = model.bias.detach().clone().requires_grad_(True)
    opt = AdamW([{"params": [scale, bias]}], lr=0.05)
    for _ in range(CALIBRATION_STEPS):
        opt.zero_grad()
        F.cross_entropy(dots * scale + bias, y_tr, weight=weights_c).backward()
        opt.step()
    if torch.isfinite(scale).all() and torch.isfinite(bias).all():
        with torch.no_grad():
            model.scale.copy_(scale / model.dim)
            model.bias.copy_(bias)


def _metrics(
    head_type: str,
    weights: dict[str, Tensor],
    x_float: np.ndarray | None,
    x_bits: np.ndarray | None,
    y: np.ndarray,
    labels: list[str],
    split: Any,
    dim: int,
) -> dict[str, Any]:
    """Metrics of the exported weights on the validation part (the training part if none)."""
    eval_idx = split.val.numpy() if len(split.val) else split.train.numpy()
    pick = lambda a: None if a is None else a[eval_idx]  # noqa: E731
    logits = score(head_type, weights, pick(x_float), pick(x_bits), dim)
    y_eval = torch.from_numpy(y[eval_idx])
    report = classification_report(logits, y_eval, labels)
    has_val = len(split.val) > 0
    return {
        "eval_split": "validation" if has_val else "train",
        "val_top1": round(report["top1"], 6) if has_val else None,
        "val_top5": round(report["top5"], 6) if has_val else None,
        "val_loss": round(float(F.cross_entropy(logits, y_eval)), 6) if has_val else None,
        "per_class": report["per_class"],
        "confusion_matrix": report["confusion_matrix"],
        "labels": list(labels),
    }
