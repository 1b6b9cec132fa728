"""bench.transfer's results file: the raw JSON it writes is what `--scratch-from` reads back."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from bench.transfer.__main__ import earlier_row, over_seeds, render
from bench.transfer.datasets import Task


def _task(name: str) -> Task:
    empty = np.zeros((0, 4, 4, 3), np.uint8)
    labels = np.zeros(0, np.int64)
    return Task(name, ["a", "b"], empty, labels, empty, labels)


def _row(*top1: float) -> dict:  # type: ignore[type-arg]
    return over_seeds([{"top1": t, "top5": 1.0, "train_seconds": 1.0} for t in top1])


def test_scratch_row_is_reused_from_an_earlier_results_file_and_marked(tmp_path: Path) -> None:
    tasks = [_task("clipart"), _task("fashion_mnist")]
    first = {
        "clipart": {"scratch": _row(0.4, 0.5, 0.3), "b_float": _row(0.5, 0.5, 0.6)},
        "fashion_mnist": {"scratch": _row(0.8, 0.81, 0.82)},
    }
    path = tmp_path / "transfer.md"
    path.write_text(render(first, tasks, argparse.Namespace(), {"kind": "test"}, "ab" * 32))

    row = earlier_row(path, "clipart", "scratch", n_seeds=3)
    assert row["top1_runs"] == first["clipart"]["scratch"]["top1_runs"]
    assert row["reused_from"].startswith(f"{path}, made by `python -m bench.transfer")

    again = render(
        {"clipart": {"scratch": row}, "fashion_mnist": {}},
        tasks,
        argparse.Namespace(),
        {"kind": "test"},
        "cd" * 32,
    )
    assert "40.0% ± 10.0 / 100.0% (reused)" in again
    assert f"Rows marked reused come from {path}, made by" in again

    with pytest.raises(SystemExit, match="no scratch row of fashion_mnist over 5 seeds"):
        earlier_row(path, "fashion_mnist", "scratch", n_seeds=5)
    with pytest.raises(SystemExit, match=r"not a bench\.transfer results file"):
        earlier_row(Path(__file__), "clipart", "scratch", n_seeds=3)


def test_out_of_domain_gate_needs_the_ratio_the_margin_over_random_and_the_baseline() -> None:
    from bench.transfer.__main__ import gate_lines

    ood = Task("clipart_ood", ["a", "b"], *[np.zeros(0)] * 4, out_of_domain=True)  # type: ignore[arg-type]
    rows = {"teacher_float": _row(0.7), "b_float": _row(0.6), "random_float": _row(0.4)}
    assert "meets the out-of-domain gate" in gate_lines(ood, rows)[-1]
    below_random = {**rows, "random_float": _row(0.5)}
    assert "does not meet" in gate_lines(ood, below_random)[-1]
    low_ratio = {**rows, "teacher_float": _row(0.9)}
    assert "does not meet" in gate_lines(ood, low_ratio)[-1]
    above_baseline = gate_lines(ood, {**rows, "baseline_b_float": _row(0.55)})
    assert "+5.0 points" in above_baseline[0] and "meets the" in above_baseline[-1]
    assert "does not meet" in gate_lines(ood, {**rows, "baseline_b_float": _row(0.65)})[-1]
    in_dist = Task("clipart", ["a", "b"], *[np.zeros(0)] * 4)  # type: ignore[arg-type]
    assert len(gate_lines(in_dist, rows)) == 1  # in-distribution rows are reported, not gated


def test_the_swapped_fold_trains_on_the_test_half_and_keeps_the_domain() -> None:
    from bench.transfer.datasets import swapped

    xtr, xte = np.zeros((3, 2, 2, 3), np.uint8), np.ones((5, 2, 2, 3), np.uint8)
    ytr, yte = np.array([0, 1, 0]), np.array([1, 1, 0, 0, 1])
    task = Task("clipart_ood", ["a", "b"], xtr, ytr, xte, yte, out_of_domain=True)
    other = swapped(task)
    assert other.name == "clipart_ood_swap" and other.out_of_domain
    assert other.x_train is xte and other.y_train is yte
    assert other.x_test is xtr and other.y_test is ytr
    assert "5 train / 3 test" in other.describe()
