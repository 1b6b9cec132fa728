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
from torch.nn.utils import fuse_conv_bn_eval

from extractor.layers import BinaryUnitBN, FoldedBinaryLayer, is_fully_binary, set_binarize
from extractor.models import create_model
from extractor.packing import pack_signs, pack_weight_signs, unpack_weight_signs

__all__ = [
    "DEFAULT_CHECKPOINT",
    "FORMAT",
    "CheckpointError",
    "LoadedExtractor",
    "checkpoint_provenance",
    "fold_real_batch_norms",
    "load_checkpoint",
    "load_trainable",
    "restamp_preprocessing",
    "save_checkpoint",
]

FORMAT = "headhub-binary/1"
META_KEY = "headhub"  # the safetensors metadata key holding the JSON document below
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default.safetensors"


class CheckpointError(ValueError):
    """A checkpoint cannot be written (model not fully binary) or read (corrupt, unknown)."""


def _units(model: nn.Module) -> dict[str, BinaryUnitBN]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BinaryUnitBN)}


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _count_parameters(model: nn.Module, skip: list[str]) -> dict[str, int]:
    binary = sum(u.op.weight.numel() for n, u in _units(model).items() if not _under(n, skip))
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
    units = {n: u for n, u in _units(model).items() if not _under(n, skip)}
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
    return _write(tensors, meta, path)


def _write(tensors: dict[str, Tensor], meta: dict[str, Any], path: str | Path) -> str:
    """Serialise atomically; the id is the SHA-256 of the bytes written."""
    # One metadata key: safetensors writes its metadata map in random order, and the id must be
    # a function of the content only.
    data = st_save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()


def restamp_preprocessing(path: str | Path, out: str | Path, note: str) -> str:
    """Give the checkpoint at `path` the preprocessing its architecture's code now declares.

    The weights stay byte for byte; `pretrained_cfg` is replaced and the change is appended to
    the provenance's `changes` (with `note`), so the new file (a new id) says how it was made.
    """
    data = Path(path).read_bytes()
    meta = _read_metadata(data)
    with torch.device("meta"):
        new_cfg = create_model(meta["arch"], **meta["config"]).pretrained_cfg
    if new_cfg == meta["pretrained_cfg"]:
        raise CheckpointError(f"{path} already has its architecture's preprocessing")
    change = {
        "what": "pretrained_cfg",
        "from": meta["pretrained_cfg"],
        "to": new_cfg,
        "parent": hashlib.sha256(data).hexdigest(),
        "note": note,
    }
    meta["provenance"] = {
        **meta["provenance"],
        "changes": [*meta["provenance"].get("changes", []), change],
    }
    meta["pretrained_cfg"] = new_cfg
    return _write(st_load(data), meta, out)


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
    meta = _read_metadata(data)
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
        "parent": hashlib.sha256(data).hexdigest(),
        "note": note,
    }
    meta["provenance"] = {
        **meta["provenance"],
        "changes": [*meta["provenance"].get("changes", []), change],
    }
    meta["config"], meta["feature_dim"] = asdict(target.config), target.feature_dim
    return _write(tensors, meta, out)


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


def _read_metadata(data: bytes) -> dict[str, Any]:
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


def fold_real_batch_norms(model: nn.Module) -> None:
    """Fold every eval-mode BatchNorm2d that directly follows a real Conv2d into the conv.

    One op instead of two in the inference network, for the float reference and the fast path
    alike (both run these real convs through the same torch op, so they stay bit-identical to each
    other). The folded network equals the trained one up to float rounding.
    """
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in reversed(range(len(seq) - 1)):  # back to front: deleting re-numbers the rest
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(conv, bn)
                del seq[i + 1]


def load_checkpoint(path: str | Path = DEFAULT_CHECKPOINT) -> LoadedExtractor:
    """Rebuild the folded inference network (eval, no grad) and its id from a checkpoint file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    meta = _read_metadata(data)
    try:
        tensors = st_load(data)
        with torch.device("meta"):
            model = create_model(meta["arch"], **meta["config"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt checkpoint {path}: {exc}") from exc
    units = _units(model)
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
        id=hashlib.sha256(data).hexdigest(),
        arch=meta["arch"],
        metadata=meta,
        path=path,
        size_bytes=len(data),
        pretrained_cfg=meta["pretrained_cfg"],
    )


def checkpoint_provenance(path: Path) -> tuple[str, dict[str, Any]]:
    """(extractor id, provenance) of a checkpoint file, without building the network."""
    data = Path(path).read_bytes()
    return hashlib.sha256(data).hexdigest(), dict(_read_metadata(data).get("provenance") or {})


@torch.no_grad()
def load_trainable(model: nn.Module, path: str | Path, calibration: Tensor, seed: int = 0) -> None:
    """Warm-start a trainable `model` (same architecture) from the packed checkpoint at `path`.

    The checkpoint keeps sign(W) and the folded affine of each binary unit, not the latent
    weights nor the BN statistics behind the affine. Latent weights become sign(W) times
    magnitudes drawn from U(0.01, 0.2) (a trained run's are spread like this, so that Adam can
    flip the least certain signs early); each unit's BN is then solved so that its eval-mode
    function is exactly the checkpoint's, with running statistics measured on `calibration`
    (normalized inputs), so that train-mode BN starts near them too. Real layers load as stored;
    the pretraining head, absent from extractor checkpoints, stays as initialised.
    """
    data = Path(path).read_bytes()
    meta = _read_metadata(data)
    m: Any = model
    if meta["arch"] != m.arch or type(m.config)(**meta["config"]) != m.config:
        raise CheckpointError(f"{path} holds {meta['arch']} {meta['config']}, not this model")
    tensors = st_load(data)
    units = _units(model)
    set_binarize(model, activations=True, weights=True)
    gen = torch.Generator().manual_seed(seed)
    affine: dict[str, tuple[Tensor, Tensor]] = {}
    for name, spec in meta["binary_layers"].items():
        unit = units[name]
        signs = unpack_weight_signs(tensors.pop(f"{name}.weight_bits"), tuple(spec["shape"]))
        magnitude = torch.empty(signs.shape).uniform_(0.01, 0.2, generator=gen)
        unit.op.weight.copy_(signs * magnitude)
        if spec["threshold"]:
            unit.threshold.bias.copy_(tensors.pop(f"{name}.threshold"))  # type: ignore[union-attr]
        affine[name] = (tensors.pop(f"{name}.scale"), tensors.pop(f"{name}.bias"))
        _solve_bn(unit, *affine[name], torch.zeros_like(unit.bn.running_mean), None)  # type: ignore[arg-type]
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{path} has unknown tensors: {result.unexpected_keys[:5]}")
    # Pre-BN statistics of every unit under the checkpoint's own function (eval mode)
    stats: dict[str, list[Tensor]] = {}

    def record(unit: BinaryUnitBN, inputs: tuple[Tensor, ...], _out: Tensor, name: str) -> None:
        x = inputs[0] if unit.threshold is None else unit.threshold(inputs[0])
        y = unit.op.forward_unscaled(unit.act(x) if unit.act is not None else x)
        if unit.pool is not None:
            y = unit.pool(y)
        dims = [0, 2, 3] if y.dim() == 4 else [0]
        stats[name] = [y.mean(dims), y.var(dims, unbiased=False)]

    was_training = model.training
    model.eval()
    hooks = [
        u.register_forward_hook(lambda mod, i, o, n=n: record(mod, i, o, n))  # type: ignore[misc]
        for n, u in units.items()
        if n in affine
    ]
    try:
        model.forward_features(calibration)  # type: ignore[operator]
    finally:
        for h in hooks:
            h.remove()
    for name, (scale, bias) in affine.items():
        _solve_bn(units[name], scale, bias, *stats[name])
    model.train(was_training)


def _solve_bn(
    unit: BinaryUnitBN, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor | None
) -> None:
    """Set the unit's BN so that `folded_affine` gives `scale` and `bias`, given the mean and
    variance (1 if None) of the unscaled op output y. BN sees z = y * alpha, so with its running
    statistics those of z: scale = gamma * alpha / sqrt(var_z + eps) and
    bias = beta - mean_z * gamma / sqrt(var_z + eps) = beta - mean_z * scale / alpha."""
    bn = unit.bn
    var = torch.ones_like(mean) if var is None else var
    alpha = unit.op.alpha()
    alpha = torch.ones_like(mean) if alpha is None else alpha
    mean, var = mean * alpha, var * alpha * alpha  # of z
    inv = torch.rsqrt(var + bn.eps)
    bn.running_mean.copy_(mean)  # type: ignore[union-attr]
    bn.running_var.copy_(var)  # type: ignore[union-attr]
    bn.weight.copy_(scale / (alpha * inv))
    bn.bias.copy_(bias + mean * scale / alpha)


def init_default_checkpoint(path: str | Path = DEFAULT_CHECKPOINT, seed: int = 0) -> str:
    """Write the random-init stand-in default: seeded weights, BN calibrated on procedural images.

    Deterministic (no date in the provenance), so the same code and seed give the same id.
    """
    from extractor.calibration import calibrate_bn, normalize, procedural_images
    from extractor.models import DEFAULT_ARCH

    torch.manual_seed(seed)
    model: Any = create_model(DEFAULT_ARCH)
    size = model.pretrained_cfg["input_size"][-1]
    n_images = 128
    calibrate_bn(model, normalize(procedural_images(n_images, size, seed), model.pretrained_cfg))
    provenance = {
        "kind": "random-init",
        "note": "RANDOM-INIT STAND-IN, not trained: seeded random weights, BN statistics "
        "calibrated on procedural images; replace with a distilled checkpoint",
        "seed": seed,
        "teacher": None,
        "corpus": f"{n_images} procedural images (BN calibration only)",
        "steps": 0,
        "command": "python -m extractor.checkpoint --init-default",
        "date": None,
    }
    return save_checkpoint(model, path, provenance)


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m extractor.checkpoint")
    parser.add_argument("--init-default", action="store_true", help="write the random-init default")
    parser.add_argument(
        "--restamp-preprocessing",
        type=Path,
        metavar="CHECKPOINT",
        help="write CHECKPOINT to --out with the preprocessing its architecture now declares",
    )
    parser.add_argument("--note", default="", help="why (kept in the provenance)")
    parser.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.restamp_preprocessing:
        print(restamp_preprocessing(args.restamp_preprocessing, args.out, args.note), args.out)
    elif args.init_default:
        print(init_default_checkpoint(args.out, args.seed), args.out)
    else:
        parser.error("nothing to do (use --init-default or --restamp-preprocessing)")


if __name__ == "__main__":
    _main()
