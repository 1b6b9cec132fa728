"""Conversions of one packed checkpoint into another, the trained weights kept.

Each writes a new file (a new id) and appends what changed, the parent's id and a note to the
provenance's `changes`, so a checkpoint says how it was made:
- `restamp_preprocessing`: the preprocessing (`pretrained_cfg`) the architecture's code now
  declares, weights byte for byte (docs/distillation.md, "Preprocessing");
- `repool`: the final map pooled another way, only the feature-centring BN refitted
  (docs/distillation.md, "Pooling").
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from torch import Tensor

from extractor.checkpoint import (
    CheckpointError,
    checkpoint_id,
    load_checkpoint,
    read_metadata,
    write_checkpoint,
)
from extractor.models import create_model

__all__ = ["repool", "restamp_preprocessing"]


def _record_change(meta: dict[str, Any], parent: bytes, change: dict[str, Any], note: str) -> None:
    """Append `change` (with the parent file's id and `note`) to the provenance's `changes`."""
    entry = {**change, "parent": checkpoint_id(parent), "note": note}
    meta["provenance"] = {
        **meta["provenance"],
        "changes": [*meta["provenance"].get("changes", []), entry],
    }


def restamp_preprocessing(path: str | Path, out: str | Path, note: str) -> str:
    """Give the checkpoint at `path` the preprocessing its architecture's code now declares.

    The weights stay byte for byte; `pretrained_cfg` is replaced and the change is appended to
    the provenance's `changes` (with `note`), so the new file (a new id) says how it was made.
    """
    data = Path(path).read_bytes()
    meta = read_metadata(data)
    with torch.device("meta"):
        new_cfg = create_model(meta["arch"], **meta["config"]).pretrained_cfg
    if new_cfg == meta["pretrained_cfg"]:
        raise CheckpointError(f"{path} already has its architecture's preprocessing")
    change = {"what": "pretrained_cfg", "from": meta["pretrained_cfg"], "to": new_cfg}
    _record_change(meta, data, change, note)
    meta["pretrained_cfg"] = new_cfg
    return write_checkpoint(st_load(data), meta, out)


@torch.no_grad()
def repool(
    path: str | Path,
    out: str | Path,
    calibration: Tensor,
    note: str,
    *,
    pool: str | None = None,
    feature_grid: int | None = None,
) -> str:
    """Write the checkpoint at `path` to `out` with its final map pooled another way.

    Pooling has no parameters, so a trained network can serve another `pool` or `feature_grid`
    (`extractor.models.birealnet`); only the feature-centring BN (`feature_norm`) changes: its
    statistics are measured on `calibration`, a batch of preprocessed images (corpus views, not
    test images). Every other tensor is kept byte for byte, and the change, its parent id and
    `note` are appended to the provenance's `changes`.
    """
    data = Path(path).read_bytes()
    meta = read_metadata(data)
    changed = {k: v for k, v in (("pool", pool), ("feature_grid", feature_grid)) if v is not None}
    try:
        with torch.device("meta"):  # only their configs and pool() are used
            before: Any = create_model(meta["arch"], **meta["config"])
            target: Any = create_model(meta["arch"], **{**meta["config"], **changed})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta['arch']} cannot pool with {changed}: {exc}") from exc
    old = {k: getattr(before.config, k) for k in changed}
    if old == changed:
        raise CheckpointError(f"{path} already pools that way: {changed}")
    body: Any = load_checkpoint(path).model  # a BiRealNet: its pool is the one that changes
    f = torch.cat(
        [target.pool(body.final(body.stages(body.stem(x)))) for x in calibration.split(256)]
    )
    tensors = st_load(data)
    tensors["feature_norm.running_mean"] = f.mean(0).contiguous()
    tensors["feature_norm.running_var"] = f.var(0).contiguous()
    change = {
        "what": "pooling",
        "from": old,
        "to": changed,
        "feature_norm": f"refitted on {len(calibration)} calibration images",
    }
    _record_change(meta, data, change, note)
    meta["config"], meta["feature_dim"] = asdict(target.config), target.feature_dim
    return write_checkpoint(tensors, meta, out)
