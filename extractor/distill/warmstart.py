"""Warm start of a distillation run from a packed checkpoint (`train --init CHECKPOINT`).

A packed checkpoint keeps sign(W) and each binary unit's folded affine, not the latent weights nor
the batch-norm statistics behind the affine; `load_trainable` rebuilds a trainable network whose
eval-mode function is the checkpoint's (docs/distillation.md, "Views, loss and schedule").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from torch import Tensor, nn

from extractor.checkpoint import CheckpointError, read_metadata
from extractor.layers import BinaryUnitBN, binary_units, set_binarize
from extractor.packing import unpack_weight_signs

__all__ = ["load_trainable"]


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
    meta = read_metadata(data)
    m: Any = model
    if meta["arch"] != m.arch or type(m.config)(**meta["config"]) != m.config:
        raise CheckpointError(f"{path} holds {meta['arch']} {meta['config']}, not this model")
    tensors = st_load(data)
    units = binary_units(model)
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
