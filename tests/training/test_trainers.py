"""Head trainers on synthetic problems whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from service.heads.evaluate import logits as served_logits
from service.heads.headfile import HeadFile, validate_weights
from service.training import (
    InvalidParams,
    InvalidTrainingData,
    TrainingCancelled,
    score,
    train_head,
)
from tests.training.synthetic import blobs, flipped_prototypes, xor_problem

FAST = {"epochs": 40, "patience": 8, "batch_size": 1024, "lr": 0.05}


@pytest.mark.parametrize("head_type", ["float", "mlp"])
def test_float_and_mlp_heads_separate_separable_clusters_perfectly(head_type: str) -> None:
    x, bits, y, labels = blobs()
    head = train_head(head_type, x, bits, y, labels, FAST, seed=0, validation_fraction=0.25)
    assert head.metrics["val_top1"] == 1.0
    assert head.metrics["val_top5"] == 1.0
    assert head.metrics["n_val"] == 76 and head.metrics["n_train"] == 224


def test_binary_head_learns_noisy_sign_prototypes() -> None:
    x, bits, y, labels = flipped_prototypes()
    head = train_head("binary", x, bits, y, labels, FAST, seed=0, validation_fraction=0.25)
    assert head.metrics["val_top1"] >= 0.95
    assert head.weights["weight_bits"].dtype == torch.uint8
    assert tuple(head.weights["weight_bits"].shape) == (4, 8)


def test_mlp_solves_xor_where_a_linear_head_cannot() -> None:
    x, bits, y, labels = xor_problem()
    params = {"epochs": 150, "patience": 20, "lr": 3e-2, "hidden": 32, "batch_size": 1024}
    mlp = train_head("mlp", x, bits, y, labels, params, seed=0)
    linear = train_head("float", x, bits, y, labels, FAST, seed=0)
    assert mlp.metrics["val_top1"] >= 0.9
    assert linear.metrics["val_top1"] <= 0.7


@pytest.mark.parametrize("head_type", ["float", "binary", "mlp"])
def test_exported_weights_fit_the_registry_layout_and_score_like_serving(head_type: str) -> None:
    x, bits, y, labels = blobs(d=30)  # D not a multiple of 8: exercises the padding bits
    head = train_head(head_type, x, bits, y, labels, FAST, seed=1)
    weights = {k: v.numpy() for k, v in head.weights.items()}
    validate_weights(head_type, weights, num_classes=len(labels), feature_dim=30)
    served = served_logits(
        HeadFile(head_type, labels, "ext", 30, {}, "2024-01-01T00:00:00Z", weights), x, bits
    )
    ours = score(head_type, head.weights, x, bits, 30).numpy()
    np.testing.assert_allclose(ours, served, rtol=1e-4, atol=1e-4)
    assert (served.argmax(1) == y).mean() == 1.0


def test_binary_score_is_the_xnor_popcount_of_the_sign_dot_product() -> None:
    x, bits, y, labels = flipped_prototypes(d=30)
    head = train_head("binary", x, bits, y, labels, FAST, seed=0)
    w_pm = np.unpackbits(head.weights["weight_bits"].numpy(), axis=1, count=30, bitorder="little")
    dots = np.where(x >= 0, 1.0, -1.0) @ (w_pm * 2.0 - 1.0).T
    expected = dots * head.weights["scale"].numpy() + head.weights["bias"].numpy()
    np.testing.assert_allclose(score("binary", head.weights, None, bits, 30), expected, rtol=1e-5)


def test_binary_training_needs_only_packed_bits_and_the_feature_width() -> None:
    x, bits, y, labels = flipped_prototypes()
    from_bits = train_head("binary", None, bits, y, labels, FAST, seed=0, feature_dim=64)
    with_floats = train_head("binary", x, bits, y, labels, FAST, seed=0)
    assert torch.equal(from_bits.weights["weight_bits"], with_floats.weights["weight_bits"])


@pytest.mark.parametrize("head_type", ["float", "binary", "mlp"])
def test_same_seed_gives_identical_weights(head_type: str) -> None:
    x, bits, y, labels = blobs(spread=1.5)
    a = train_head(head_type, x, bits, y, labels, FAST, seed=7)
    b = train_head(head_type, x, bits, y, labels, FAST, seed=7)
    assert a.weights.keys() == b.weights.keys()
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert a.metrics["history"] == b.metrics["history"]


def test_another_seed_gives_another_validation_split() -> None:
    x, bits, y, labels = blobs(spread=1.5)
    a = train_head("mlp", x, bits, y, labels, FAST, seed=1)
    b = train_head("mlp", x, bits, y, labels, FAST, seed=2)
    assert not torch.equal(a.weights["w1"], b.weights["w1"])


def test_early_stopping_ends_training_patience_epochs_after_the_best() -> None:
    x, bits, y, labels = blobs(n=200, spread=4.0)  # overlapping: the validation loss turns up
    params = {"epochs": 2000, "patience": 5, "lr": 0.05, "weight_decay": 0.0, "batch_size": 64}
    head = train_head("mlp", x, bits, y, labels, params, seed=0)
    m = head.metrics
    assert m["stopped_early"] is True
    assert m["epochs_run"] < 2000
    assert m["epochs_run"] == m["best_epoch"] + 5
    assert len(m["history"]) == m["epochs_run"]


def test_class_balancing_raises_recall_of_a_rare_label() -> None:
    rng = np.random.default_rng(0)
    n_major, n_minor, d = 570, 30, 16
    x = np.concatenate([rng.normal(0.0, 1.0, (n_major, d)), rng.normal(0.7, 1.0, (n_minor, d))])
    x = x.astype(np.float32)
    y = np.array([0] * n_major + [1] * n_minor)
    bits = np.packbits((x >= 0).astype(np.uint8), axis=1, bitorder="little")
    for monitor in ("loss", "top1"):  # whichever metric picks the epoch, weighted alike
        recall = {}
        for balance in (True, False):
            p = {**FAST, "class_balance": balance, "monitor": monitor}
            head = train_head(
                "float", x, bits, y, ["common", "rare"], p, seed=0, validation_fraction=0.5
            )
            recall[balance] = head.metrics["per_class"]["rare"]["recall"]
        assert recall[True] >= 0.6
        assert recall[True] > recall[False] + 0.15


def test_validation_split_is_stratified_and_keeps_singletons_in_training() -> None:
    x, bits, y, labels = blobs(n=103, c=4)  # 26, 26, 26, 25 per label
    y = y.copy()
    y[-1] = 3
    labels = [*labels, "lonely"]
    y[0] = 4  # one example of a fifth label
    head = train_head("float", x, bits, y, labels, FAST, seed=0, validation_fraction=0.2)
    support = {k: v["support"] for k, v in head.metrics["per_class"].items()}
    assert support["lonely"] == 0
    assert all(support[f"label-{i}"] == 5 for i in range(4))


def test_metrics_are_complete_and_strict_json() -> None:
    x, bits, y, labels = blobs()
    m = train_head("float", x, bits, y, labels, FAST, seed=0).metrics
    json.dumps(m, allow_nan=False)
    for key in ("val_top1", "val_top5", "train_loss", "per_class", "confusion_matrix", "history"):
        assert key in m
    assert set(m["per_class"]) == set(labels)
    assert set(m["per_class"]["label-0"]) == {"precision", "recall", "support"}
    assert np.array(m["confusion_matrix"]).sum() == m["n_val"]
    assert set(m["history"][0]) >= {"epoch", "train_loss", "val_top1"}


def test_without_validation_split_metrics_come_from_training_data() -> None:
    x, bits, y, labels = blobs()
    m = train_head("float", x, bits, y, labels, FAST, seed=0, validation_fraction=0.0).metrics
    assert m["n_val"] == 0 and m["val_top1"] is None and m["eval_split"] == "train"
    assert sum(v["support"] for v in m["per_class"].values()) == len(y)


def test_lbfgs_solver_reaches_the_penalised_optimum() -> None:
    x, bits, y, labels = blobs(spread=3.0)  # overlapping: the optimum is finite
    head = train_head("float", x, bits, y, labels, {"l2": 0.05}, seed=0, validation_fraction=0.0)
    assert [h["l2"] for h in head.metrics["history"]] == [0.05]
    # Undo the export's folding and check the gradient of the penalised objective vanishes there.
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    mean, std = xt.mean(0), xt.std(0, unbiased=False).clamp_min(1e-6)
    w = (head.weights["weight"] * std).requires_grad_(True)
    b = (head.weights["bias"] + head.weights["weight"] @ mean).requires_grad_(True)
    weights = torch.bincount(yt).float().reciprocal() * len(yt) / len(labels)
    loss = torch.nn.functional.cross_entropy(((xt - mean) / std) @ w.T + b, yt, weight=weights)
    (loss + 0.05 * w.square().sum()).backward()
    assert float(w.grad.abs().max()) < 1e-3 and float(b.grad.abs().max()) < 1e-3


def test_lbfgs_cross_validates_the_penalty_and_reports_each_as_progress() -> None:
    from service.training.lbfgs import L2_GRID

    x, bits, y, labels = blobs(spread=3.0)
    seen: list[tuple[float, dict]] = []
    head = train_head(
        "float", x, bits, y, labels, seed=0, progress_cb=lambda f, m: seen.append((f, m))
    )
    history = head.metrics["history"]
    assert [h["l2"] for h in history] == list(L2_GRID)
    best = history[head.metrics["best_epoch"] - 1]
    assert best["val_top1"] == max(h["val_top1"] for h in history)  # balanced classes
    assert [f for f, _ in seen] == [i / (len(L2_GRID) + 1) for i in range(1, len(L2_GRID) + 1)] + [
        1.0
    ]
    with pytest.raises(TrainingCancelled):
        train_head("float", x, bits, y, labels, should_stop=lambda: True)


def test_lbfgs_holds_out_one_fold_from_holdout_from_examples(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from service.training import lbfgs

    x, bits, y, labels = blobs(spread=3.0)
    fits: list[int] = []
    minimize = lbfgs.minimize

    def counted(head, xs, *args):  # type: ignore[no-untyped-def]
        fits.append(len(xs))
        return minimize(head, xs, *args)

    monkeypatch.setattr(lbfgs, "minimize", counted)
    kfold = train_head("float", x, bits, y, labels, seed=0, validation_fraction=0.0)
    assert len(fits) == 5 * len(lbfgs.L2_GRID) + 1  # 5 folds per penalty, then the final fit
    fits.clear()
    params = {"holdout_from": len(y)}
    holdout = train_head("float", x, bits, y, labels, params, seed=0, validation_fraction=0.0)
    assert len(fits) == len(lbfgs.L2_GRID) + 1 and fits[-1] == len(y)
    assert fits[0] == pytest.approx(0.8 * len(y), abs=len(labels))  # trained on 4 of 5 folds
    assert {h["n_val"] for h in kfold.metrics["history"]} == {len(y)}  # every example
    assert {h["n_val"] for h in holdout.metrics["history"]} == {len(y) - fits[0]}


def test_progress_is_reported_every_epoch_and_should_stop_cancels() -> None:
    x, bits, y, labels = blobs()
    seen: list[tuple[float, dict]] = []
    with pytest.raises(TrainingCancelled):
        train_head(
            "float",
            x,
            bits,
            y,
            labels,
            {"epochs": 50, "patience": 0, "solver": "adam"},
            seed=0,
            progress_cb=lambda f, m: seen.append((f, m)),
            should_stop=lambda: len(seen) >= 3,
        )
    assert [f for f, _ in seen] == [1 / 50, 2 / 50, 3 / 50]
    assert [m["epoch"] for _, m in seen] == [1, 2, 3]


@pytest.mark.parametrize(
    ("head_type", "params"),
    [
        ("float", {"epoch": 3}),
        ("float", {"lr": -1}),
        ("binary", {"hidden": 8}),
        ("mlp", {"hidden": "wide"}),
        ("conv", {}),
    ],
)
def test_bad_params_are_refused_with_a_sentence(head_type: str, params: dict) -> None:
    x, bits, y, labels = blobs()
    with pytest.raises(InvalidParams, match=r"\w+"):
        train_head(head_type, x, bits, y, labels, params)


def test_unusable_data_is_refused() -> None:
    x, bits, y, labels = blobs()
    with pytest.raises(InvalidTrainingData, match="same label"):
        train_head("float", x, bits, np.zeros_like(y), labels, FAST)
    bad = x.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InvalidTrainingData, match="NaN"):
        train_head("float", bad, bits, y, labels, FAST)
    with pytest.raises(InvalidTrainingData, match="X_bits width"):
        train_head("binary", x, bits[:, :-1], y, labels, FAST)
