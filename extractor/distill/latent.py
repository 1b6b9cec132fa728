"""A distillation run's latent state, small enough to commit: continue a run in a later session.

A packed checkpoint keeps only the signs of the binary weights; continuing from it (`--init`)
restarts the latent weights from random magnitudes. `state.pt` keeps everything, but with the
optimizer moments in float32 it is too large to commit and lives in an ignored run directory
(docs/distillation.md, "Running it"). This file is the middle: every tensor of the student and
the feature (and map) projections in float16 (latent weights, thresholds, BN statistics, the
1000-way head), plus the run's config, step, images seen,
training time and history in the safetensors metadata. `Trainer.from_latent` rebuilds the run at
the same schedule position with fresh Adam moments (the learning rate briefly re-warms, so the
moments rebuild before full steps are taken).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from extractor.distill.train import Trainer

__all__ = ["LATENT_SUFFIX", "load_latent", "save_latent"]

LATENT_SUFFIX = ".latent.safetensors"
_META = "headhub_run"


def save_latent(trainer: Trainer, path: Path) -> Path:
    """Write the run's latent state (float16 tensors + JSON position) to `path`."""
    tensors: dict[str, torch.Tensor] = {}
    modules = (
        ("student.", trainer.student),
        ("proj.", trainer.proj),
        ("map_proj.", trainer.map_proj),
    )
    for prefix, module in modules:
        for k, v in module.state_dict().items():
            v = v.detach().cpu()
            tensors[prefix + k] = v.half().contiguous() if v.is_floating_point() else v.contiguous()
    meta = {
        "config": trainer.cfg.to_json(),
        "step": trainer.step,
        "images_seen": trainer.images_seen,
        "train_seconds": trainer.train_seconds,
        "history": trainer.history,
        "baseline": trainer.baseline,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={_META: json.dumps(meta)})
    tmp.replace(path)
    return path


def load_latent(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """(position metadata, {"student": ..., "proj": ..., ["map_proj": ...]} state dicts) in
    float32."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        raw = (f.metadata() or {}).get(_META)
    if raw is None:
        raise ValueError(f"{path} is not a distillation run's latent state")
    states: dict[str, dict[str, torch.Tensor]] = {"student": {}, "proj": {}}
    for k, v in load_file(str(path)).items():
        part, _, name = k.partition(".")
        states.setdefault(part, {})[name] = v.float() if v.is_floating_point() else v
    return json.loads(raw), states
