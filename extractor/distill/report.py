"""Markdown curves from a run's `metrics.jsonl`: `headhub extractor report runs/NAME`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["curves_markdown", "load_metrics"]


def load_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curves_markdown(records: list[dict[str, Any]], rows: int = 12) -> str:
    """Two tables: training loss at about `rows` evenly spaced points, and every evaluation."""
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    out = [
        "| step | images | train min | stage | img/s | loss | KL | 1-cos | lr |",
        "|" + "---|" * 9,
    ]
    if train:
        idx = sorted({round(i * (len(train) - 1) / max(1, rows - 1)) for i in range(rows)})
        for r in (train[i] for i in idx):
            out.append(
                f"| {r['step']} | {r['images']} | {r['minutes']:.1f} | {r['stage']} | "
                f"{r['ips']:.1f} | {r['loss']:.3f} | {r['kl']:.3f} | {r['cos']:.3f} | "
                f"{r['lr']:.1e} |"
            )
    sources = sorted({k.split("/")[0] for r in evals for k in r if "/" in k})
    head = "| step | train min | agree | cos | " + " | ".join(f"{s} agree / cos" for s in sources)
    out += ["", head + " |", "|" + "---|" * (4 + len(sources))]
    for r in evals:
        per = " | ".join(f"{r[f'{s}/agree']:.3f} / {r[f'{s}/cos']:.3f}" for s in sources)
        out.append(
            f"| {r['step']} | {r['minutes']:.1f} | {r['agree']:.3f} | {r['cos']:.3f} | {per} |"
        )
    return "\n".join(out)
