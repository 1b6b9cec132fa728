"""Packed 1-bit checkpoints: safetensors + JSON metadata; the extractor id is the file's SHA-256.

Layout (format `headhub-binary/1`):
- for every binary unit at module path P (see `layers.BinaryUnitBN`):
  `P.weight_bits` uint8, the signs of the latent weight flattened row-major, 1 bit per weight
  (bit = w >= 0, numpy packbits little bit order); `P.scale`, `P.bias` float32 (O,): BN and
  alpha folded; `P.threshold` float32 (I,) where the unit has one. Shapes are in metadata.
- every other parameter/buffer (real stem, downsample convs, their BN, PReLU) as float32 under
  its state_dict name. The pretraining head is stored only with `include_head=True`.
- metadata: one key `headhub`, a JSON object: format, arch, config, pretrained_cfg,
  feature_dim, provenance, binary_layers {P: {shape, binary_input, threshold}},
  parameters {binary, real}, has_head.

`load_checkpoint` rebuilds the architecture with each binary unit replaced by a
`FoldedBinaryLayer` (±1 float weights): the float reference path, in eval mode, frozen.
This module is the format only; conversions of one checkpoint into another (restamp, repool) are
`extractor.conversions`, the distillation warm start is `extractor.distill.warmstart`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from extractor.layers import (
    FoldedBinaryLayer,
    binary_units,
    fold_real_batch_norms,
    is_fully_binary,
)
from extractor.models import create_model
from extractor.packing import pack_signs, pack_weight_signs, unpack_weight_signs

__all__ = [
    "DEFAULT_CHECKPOINT",
    "FORMAT",
    "CheckpointError",
    "LoadedExtractor",
    "checkpoint_id",
    "checkpoint_provenance",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
    "write_checkpoint",
]

FORMAT = "headhub-binary/1"
META_KEY = "headhub"  # the safetensors metadata key holding the JSON document below
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default.safetensors"


class CheckpointError(ValueError):
    """A checkpoint cannot be written (model not fully binary) or read (corrupt, unknown)."""


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _count_parameters(model: nn.Module, skip: list[str]) -> dict[str, int]:
    binary = sum(u.op.weight.numel() for n, u in binary_units(model).items() if not _under(n, skip))
    total = sum(p.numel() for n, p in model.named_parameters() if not _under(n, skip))
    return {"binary": binary, "real": total - binary}


def save_checkpoint(
    model: nn.Module, path: str | Path, provenance: dict[str, Any], *, include_head: bool = False
) -> str:
    """Write `model` packed to `path` (atomically) and return its extractor id (SHA-256 hex)."""
    m: Any = model  # registry attributes (arch, config, ...) are invisible to nn.Module typing
    if not is_fully_binary(model):
        raise CheckpointError(
            "binary activations and weights must be on: set_binarize(m, True, True)"
        )
    if not provenance:
        raise CheckpointError("provenance is required (teacher, corpus, steps, ... or random-init)")
    skip = [] if include_head else ["head"]
    units = {n: u for n, u in binary_units(model).items() if not _under(n, skip)}
    tensors: dict[str, Tensor] = {}
    layers: dict[str, Any] = {}
    for name, unit in units.items():
        scale, bias = unit.folded_affine()
        tensors[f"{name}.weight_bits"] = pack_weight_signs(unit.op.weight)
        tensors[f"{name}.scale"], tensors[f"{name}.bias"] = scale, bias
        if unit.threshold is not None:
            tensors[f"{name}.threshold"] = unit.threshold.bias.detach().float().contiguous()
        layers[name] = {
            "shape": list(unit.op.weight.shape),
            "binary_input": unit.act is not None,
            "threshold": unit.threshold is not None,
        }
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") or _under(key, [*units, *skip]):
            continue
        tensors[key] = value.detach().float().contiguous()
    meta = {
        "format": FORMAT,
        "arch": m.arch,
        "config": asdict(m.config),
        "pretrained_cfg": m.pretrained_cfg,
        "feature_dim": m.feature_dim,
        "provenance": provenance,
        "binary_layers": layers,
        "parameters": _count_parameters(model, skip),
        "has_head": include_head,
    }
    return write_checkpoint(tensors, meta, path)


def checkpoint_id(data: bytes) -> str:
    """The extractor id of a checkpoint file's bytes: their SHA-256, hex."""
    return hashlib.sha256(data).hexdigest()


def write_checkpoint(tensors: dict[str, Tensor], meta: dict[str, Any], path: str | Path) -> str:
    """Serialise atomically and return the id (`checkpoint_id` of the bytes written)."""
    # One metadata key: safetensors writes its metadata map in random order, and the id must be
    # a function of the content only.
    data = st_save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return checkpoint_id(data)


class _MissingHead(nn.Module):
    """Stands in for a pretraining head that the checkpoint does not carry."""

    def forward(self, f: Tensor) -> Tensor:
        raise CheckpointError("this checkpoint has no head (saved with include_head=False)")


@dataclass
class LoadedExtractor:
    """A frozen extractor rebuilt from a checkpoint file."""

    model: nn.Module
    id: str
    arch: str
    metadata: dict[str, Any]
    path: Path
    size_bytes: int
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        return int(self.metadata["feature_dim"])

    @torch.inference_mode()
    def extract(self, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, H, W) normalized input -> (float32 (B, D), packed sign bits uint8 (B, D/8))."""
        f = self.model.forward_features(x).float()  # type: ignore[operator]
        return f.numpy(), pack_signs(f)

    def info(self) -> dict[str, Any]:
        """The `/v1/info` document (plus the binary/real split used by `inspect`)."""
        counts = self.metadata["parameters"]
        n = counts["binary"] + counts["real"]
        return {
            "id": self.id,
            "architecture": self.arch,
            "input_size": self.pretrained_cfg["input_size"],
            "feature_dim": self.feature_dim,
            "parameters": n,
            "binary_parameters": counts["binary"],
            "real_parameters": counts["real"],
            "size_bytes": self.size_bytes,
            "bits_per_weight": round(8 * self.size_bytes / n, 3),
            "float32_bytes": 4 * n,
        }


def read_metadata(data: bytes) -> dict[str, Any]:
    """Parse the safetensors header (u64 length + JSON) without a second read of the file."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        meta = json.loads((header.get("__metadata__") or {})[META_KEY])
    except (struct.error, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"not a safetensors checkpoint: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"unsupported checkpoint format {meta.get('format')!r}")
    return meta


def _set_submodule(root: nn.Module, name: str, module: nn.Module | Tensor) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, leaf, module)


def load_checkpoint(path: str | Path = DEFAULT_CHECKPOINT) -> LoadedExtractor:
    """Rebuild the folded inference network (eval, no grad) and its id from a checkpoint file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    meta = read_metadata(data)
    try:
        tensors = st_load(data)
        with torch.device("meta"):
            model = create_model(meta["arch"], **meta["config"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt checkpoint {path}: {exc}") from exc
    units = binary_units(model)
    try:
        for name, spec in meta["binary_layers"].items():
            layer = FoldedBinaryLayer.like(units[name])
            if list(layer.weight.shape) != spec["shape"]:  # architecture code changed
                raise CheckpointError(f"{name}: shape {spec['shape']} != architecture's")
            layer.weight = unpack_weight_signs(tensors.pop(f"{name}.weight_bits"), spec["shape"])
            layer.scale = tensors.pop(f"{name}.scale")
            layer.bias = tensors.pop(f"{name}.bias")
            if spec["threshold"]:
                layer.threshold = tensors.pop(f"{name}.threshold")
            _set_submodule(model, name, layer)
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {path} lacks {exc}") from exc
    if not meta["has_head"]:
        model.head = _MissingHead()
    result = model.load_state_dict(tensors, strict=False, assign=True)
    if result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint {path} has unknown tensors: {result.unexpected_keys[:5]}"
        )
    for name, _ in list(model.named_buffers()):
        if name.endswith("num_batches_tracked"):
            _set_submodule(model, name, torch.zeros((), dtype=torch.long))  # unused in eval
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks tensors: {missing[:5]}")
    model.pretrained_cfg = meta["pretrained_cfg"]
    model.eval().requires_grad_(False)
    fold_real_batch_norms(model)
    return LoadedExtractor(
        model=model,
        id=checkpoint_id(data),
        arch=meta["arch"],
        metadata=meta,
        path=path,
        size_bytes=len(data),
        pretrained_cfg=meta["pretrained_cfg"],
    )


def checkpoint_provenance(path: Path) -> tuple[str, dict[str, Any]]:
    """(extractor id, provenance) of a checkpoint file, without building the network."""
    data = Path(path).read_bytes()
    return checkpoint_id(data), dict(read_metadata(data).get("provenance") or {})
