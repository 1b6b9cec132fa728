"""Registry of extractor architectures: `create_model(name, **config_overrides)`."""

from extractor.models import alexnet as _alexnet  # noqa: F401  (registers binary_alexnet)
from extractor.models import birealnet as _birealnet  # noqa: F401  (registers birealnet_112)
from extractor.models._registry import (
    UnknownModelError,
    create_model,
    list_models,
    make_pretrained_cfg,
    register_model,
)

DEFAULT_ARCH = "birealnet_112"

__all__ = [
    "DEFAULT_ARCH",
    "UnknownModelError",
    "create_model",
    "list_models",
    "make_pretrained_cfg",
    "register_model",
]
