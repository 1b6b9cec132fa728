"""Architecture registry (timm-style): a name maps to a model class and its config dataclass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["UnknownModelError", "create_model", "list_models", "register_model"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PCT = 0.875  # resize the shorter side to input/0.875, then center-crop (timm default)


class UnknownModelError(KeyError):
    """Raised by `create_model` for a name that is not registered."""


@dataclass(frozen=True)
class _Entry:
    cls: Callable[[Any], nn.Module]
    config_cls: type


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, config_cls: type) -> Callable[[type], type]:
    """Class decorator: `@register_model("birealnet_112", BiRealConfig)`."""

    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = _Entry(cls, config_cls)
        return cls

    return deco


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build architecture `name`; keyword overrides replace fields of its config dataclass."""
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown architecture {name!r}; known: {list_models()}") from None
    model = entry.cls(entry.config_cls(**overrides))
    model.arch = name  # type: ignore[assignment]
    return model


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def make_pretrained_cfg(input_size: int, crop_pct: float = CROP_PCT) -> dict[str, Any]:
    """Preprocessing that travels with the weights: RGB in [0, 1], ImageNet mean/std."""
    return {
        "input_size": [3, input_size, input_size],
        "resize": round(input_size / crop_pct),
        "crop": "center",
        "crop_pct": crop_pct,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "interpolation": "bilinear",
    }
