"""The paper's Table 2 on data available here: `python -m bench.transfer`.

Heads are trained by the service's own trainers (`service.training.train_head`, the code the jobs
run) and scored on held-out test sets by the same reference scoring the registry uses. Tasks are
marked in-distribution or out-of-domain (`datasets.py`); `--baseline CKPT` adds another
extractor's rows to the same run, which is how a new default is judged against the old one.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from bench.transfer.datasets import (
    Task,
    clipart_ood_task,
    clipart_task,
    fashion_mnist_task,
    swapped,
)
from bench.transfer.features import TEACHER_CFG, extract
from bench.transfer.scratch import predict_scores, train_from_scratch
from extractor.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from extractor.models import create_model
from service.training.metrics import topk_accuracy
from service.training.scoring import score
from service.training.trainer import train_head

ROWS = [
    ("teacher_float", "float teacher (EfficientNet-Lite0), float last layer"),
    ("scratch", "binary network trained from scratch on the target set"),
    ("a_binary", "(a) binary extractor, binary last layer"),
    ("b_float", "(b) binary extractor, float last layer"),
    ("mlp", "binary extractor, mlp head (one float hidden layer)"),
    ("random_float", "control: randomly initialised binary extractor, float last layer"),
    ("teacher_small", "control: float teacher at the binary extractor's input size"),
    ("baseline_a_binary", "baseline extractor (--baseline), binary last layer"),
    ("baseline_b_float", "baseline extractor (--baseline), float last layer"),
]
# The gate for a new default (docs/distillation.md): on out-of-domain rows (b) >= 0.75x the
# teacher at 224 px and >= 15 points above the random-init control.
GATE_RATIO, GATE_OVER_RANDOM = 0.75, 0.15


def scored(scores: torch.Tensor, y: np.ndarray, train_seconds: float) -> dict:  # type: ignore[type-arg]
    labels = torch.from_numpy(y)
    return {
        "top1": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, 5),
        "train_seconds": train_seconds,
    }


def over_seeds(runs: list[dict]) -> dict:  # type: ignore[type-arg]
    """Mean top-1/top-5 of one row trained with several seeds, with the spread kept.

    Heads on a few hundred images swing by several points between seeds (the split that early
    stopping holds out changes), more than most differences between extractors: one seed cannot
    rank them.
    """
    top1 = np.array([r["top1"] for r in runs])
    return {
        "top1": float(top1.mean()),
        "top5": float(np.mean([r["top5"] for r in runs])),
        "top1_std": float(top1.std(ddof=1)) if len(runs) > 1 else 0.0,
        "top1_runs": [round(float(t), 4) for t in top1],
        "train_seconds": round(float(np.mean([r["train_seconds"] for r in runs])), 3),
    }


def head_row(head_type: str, task: Task, train: tuple, test: tuple, seeds: list[int]) -> dict:  # type: ignore[type-arg]
    (f_tr, b_tr), (f_te, b_te) = train, test
    runs = []
    for seed in seeds:
        trained = train_head(
            head_type,
            f_tr,
            b_tr,
            task.y_train,
            task.labels,
            seed=seed,
            # The float solver cross-validates on every image; the others stop early on 20%.
            validation_fraction=0.0 if head_type == "float" else 0.2,
        )
        s = score(head_type, trained.weights, f_te, b_te, f_tr.shape[1])
        runs.append(scored(s, task.y_test, trained.metrics["train_seconds"]))
    return over_seeds(runs)


def run_task(task: Task, args: argparse.Namespace, log) -> dict[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    log(task.describe())
    seeds = list(range(args.seed, args.seed + args.seeds))
    results: dict[str, dict] = {}  # type: ignore[type-arg]
    loaded = load_checkpoint(args.checkpoint)
    extractors = [(loaded, "", ("binary", "float", "mlp"))]
    if args.baseline is not None:
        extractors.append((load_checkpoint(args.baseline), "baseline_", ("binary", "float")))
    for ckpt, prefix, head_types in extractors:
        t0 = time.perf_counter()
        binary = (
            extract(ckpt.model.forward_features, task.x_train, ckpt.pretrained_cfg),
            extract(ckpt.model.forward_features, task.x_test, ckpt.pretrained_cfg),
        )
        log(f"  {prefix}binary features in {time.perf_counter() - t0:.1f}s")
        keys = {"binary": "a_binary", "float": "b_float", "mlp": "mlp"}
        for head_type in head_types:
            key = prefix + keys[head_type]
            results[key] = head_row(head_type, task, *binary, seeds=seeds)
            log(f"  {key}: {results[key]}")

    torch.manual_seed(args.seed)
    rand = create_model(loaded.arch, **loaded.metadata["config"]).eval()  # same pooling
    rnd = (
        extract(rand.forward_features, task.x_train, rand.pretrained_cfg),
        extract(rand.forward_features, task.x_test, rand.pretrained_cfg),
    )
    results["random_float"] = head_row("float", task, *rnd, seeds=seeds)
    log(f"  random_float: {results['random_float']}")

    from extractor.teacher import load_teacher

    teacher = load_teacher(fold_bn=True)  # same outputs to float rounding, faster
    t0 = time.perf_counter()
    tf = (
        extract(teacher.forward_features, task.x_train, TEACHER_CFG),
        extract(teacher.forward_features, task.x_test, TEACHER_CFG),
    )
    log(f"  teacher features in {time.perf_counter() - t0:.1f}s")
    results["teacher_float"] = head_row("float", task, *tf, seeds=seeds)
    log(f"  teacher_float: {results['teacher_float']}")
    # How much of the gap is input resolution alone: the teacher on the extractor's crop size.
    small = {**TEACHER_CFG, **{k: loaded.pretrained_cfg[k] for k in ("input_size", "resize")}}
    ts = (
        extract(teacher.forward_features, task.x_train, small),
        extract(teacher.forward_features, task.x_test, small),
    )
    results["teacher_small"] = head_row("float", task, *ts, seeds=seeds)
    log(f"  teacher_small: {results['teacher_small']}")

    if args.scratch_from is not None:
        results["scratch"] = earlier_row(args.scratch_from, task.name, "scratch", len(seeds))
        log(f"  scratch (from {args.scratch_from}): {results['scratch']}")
    elif args.scratch_epochs > 0:
        runs = []
        for seed in seeds:
            t0 = time.perf_counter()
            net = train_from_scratch(
                task.x_train,
                task.y_train,
                len(task.labels),
                epochs=args.scratch_epochs,
                seed=seed,
                log=log,
            )
            s = predict_scores(net, task.x_test)
            runs.append(scored(s, task.y_test, round(time.perf_counter() - t0, 1)))
        results["scratch"] = over_seeds(runs)
        log(f"  scratch: {results['scratch']}")
    return results


def earlier_row(path: Path, task: str, key: str, n_seeds: int) -> dict:  # type: ignore[type-arg]
    """Row `key` of `task` from an earlier results file (its raw JSON), marked as reused.

    For the from-scratch row, which no extractor enters: a new extractor needs only its own
    rows re-measured, not an hour of retraining the same networks with the same seeds.
    """
    text = path.read_text()
    made = re.search(r"^Made by (.*)\.$", text, re.M)
    raw = re.search(r"```json\n(.*?)\n```", text, re.S)
    if not made or not raw:
        raise SystemExit(f"{path} is not a bench.transfer results file")
    row = json.loads(raw.group(1)).get(task, {}).get(key)
    if row is None or len(row["top1_runs"]) != n_seeds:
        raise SystemExit(f"{path} has no {key} row of {task} over {n_seeds} seeds")
    return {**row, "reused_from": f"{path}, made by {made.group(1)}"}


def render(
    all_results: dict[str, dict],
    tasks: list[Task],
    args: argparse.Namespace,  # type: ignore[type-arg]
    provenance: dict,
    extractor_id: str,
) -> str:  # type: ignore[type-arg]
    def cell(r: dict | None) -> str:  # type: ignore[type-arg]
        if not r:
            return "not run"
        spread = f" ± {100 * r['top1_std']:.1f}" if len(r["top1_runs"]) > 1 else ""
        reused = " (reused)" if "reused_from" in r else ""
        return f"{100 * r['top1']:.1f}%{spread} / {100 * r['top5']:.1f}%{reused}"

    kind = provenance.get("kind", provenance.get("teacher", "see metadata"))
    lines = [
        "# Transfer: the paper's Table 2 on data available here",
        "",
        f"Made by `{' '.join(['python -m bench.transfer', *sys.argv[1:]])}` on "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} ({torch.get_num_threads()} threads).",
        f"Binary extractor `{extractor_id[:16]}…` ({kind}).",
        "",
        "| top-1 / top-5 | " + " | ".join(t.describe() for t in tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for key, title in ROWS:
        lines.append(
            f"| {title} | " + " | ".join(cell(all_results[t.name].get(key)) for t in tasks) + " |"
        )
    lines.append("")
    reused = {
        r["reused_from"] for t in tasks for r in all_results[t.name].values() if "reused_from" in r
    }
    lines += [f"Rows marked reused come from {where}." for where in sorted(reused)]
    lines += [""] if reused else []
    lines += [f"- {line}" for t in tasks for line in gate_lines(t, all_results[t.name])]
    lines += ["", "Raw results:", "", "```json", json.dumps(all_results, indent=1), "```", ""]
    return "\n".join(lines)


def gate_lines(task: Task, r: dict) -> list[str]:  # type: ignore[type-arg]
    """The ratios a new default is judged by, for one task (out-of-domain rows gate it)."""
    if "teacher_float" not in r or "b_float" not in r:
        return []
    b, teacher = r["b_float"]["top1"], r["teacher_float"]["top1"]
    domain = "out-of-domain" if task.out_of_domain else "in-distribution"
    line = f"{task.name} ({domain}): (b) / teacher top-1 = **{b / max(teacher, 1e-9):.2f}**"
    if "teacher_small" in r:
        line += f" ({b / max(r['teacher_small']['top1'], 1e-9):.2f} against the teacher at the"
        line += " extractor's input size)"
    if "random_float" in r:
        line += f"; (b) - random init = {100 * (b - r['random_float']['top1']):+.1f} points"
    if "baseline_b_float" in r:
        line += f"; (b) - baseline (b) = {100 * (b - r['baseline_b_float']['top1']):+.1f} points"
    if "baseline_a_binary" in r and "a_binary" in r:
        diff = r["a_binary"]["top1"] - r["baseline_a_binary"]["top1"]
        line += f", (a) - baseline (a) = {100 * diff:+.1f}"
    out = [line + "."]
    if task.out_of_domain and "random_float" in r:
        ok = b / max(teacher, 1e-9) >= GATE_RATIO
        ok = ok and b - r["random_float"]["top1"] >= GATE_OVER_RANDOM
        if "baseline_b_float" in r:
            ok = ok and b > r["baseline_b_float"]["top1"]
        verdict = "meets" if ok else "does not meet"
        out.append(
            f"{task.name}: {verdict} the out-of-domain gate ((b) >= {GATE_RATIO:.2f}x teacher, "
            f">= {100 * GATE_OVER_RANDOM:.0f} points over random init, above the baseline)."
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument(
        "--baseline",
        type=Path,
        help="another extractor (e.g. the current default) whose (a) and (b) rows join this run",
    )
    p.add_argument("--tasks", default="clipart_ood,clipart,fashion_mnist")
    p.add_argument("--scratch-epochs", type=int, default=30)
    p.add_argument(
        "--scratch-from",
        type=Path,
        help="take the from-scratch row from this earlier results file instead of retraining it "
        "(it does not depend on the extractor; same tasks and seeds required)",
    )
    p.add_argument("--fmnist-per-class", type=int, default=100)
    p.add_argument("--test-limit", type=int, default=None, help="cap Fashion-MNIST test images")
    p.add_argument("--seed", type=int, default=0, help="first seed (also the Fashion-MNIST draw)")
    p.add_argument(
        "--seeds", type=int, default=3, help="train every row with this many seeds; report the mean"
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/transfer.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    log = lambda m: print(m, flush=True)  # noqa: E731
    builders = {
        "clipart_ood": clipart_ood_task,
        "clipart_ood_swap": lambda: swapped(clipart_ood_task()),
        "clipart": clipart_task,
        "fashion_mnist": lambda: fashion_mnist_task(
            args.fmnist_per_class, args.test_limit, args.seed
        ),
    }
    tasks = [builders[name]() for name in args.tasks.split(",")]
    all_results = {t.name: run_task(t, args, log) for t in tasks}
    loaded = load_checkpoint(args.checkpoint)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        render(all_results, tasks, args, loaded.metadata.get("provenance", {}), loaded.id)
    )
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
