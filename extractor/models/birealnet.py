"""Compact Bi-Real/QuickNet-style binary network for a 2-core CPU (the default extractor).

Liu et al., "Bi-Real Net", ECCV 2018 (real shortcut around every binary 3x3 conv);
Liu et al., "ReActNet", ECCV 2020 (learnable threshold b before the sign);
Bannink et al., "Larq Compute Engine" / QuickNet 2021 (real stem and real downsampling).

    stem:   conv3x3 s2 (real) -> BN -> PReLU                                  # (B, 32, S/2, S/2)
    stage:  avgpool 2x2 -> conv1x1 (real) -> BN, then `depth` Bi-Real blocks:
            x + BN(conv3x3(sign(x + b), sign(W) * alpha))                     # alpha = mean|W_o|
    final:  BN -> PReLU -> pool to a g x g grid -> BN (no affine)             # (B, feature_dim)
            g = feature_grid: 1 (the default) pools globally; 2 keeps which quadrant of the
            image a feature fired in, at four times the dimensions (as spatial pyramid pooling
            does, Lazebnik et al. 2006). pool = "avg" averages each channel; "avgmax" also keeps
            its maximum (the two side by side, twice the dimensions, as fastai's concat pooling):
            whether a part fired anywhere, not only how much of the map it covers. Both measured
            in docs/distillation.md ("Pooling").
            The last BN centres each feature on its running mean, so the sign bits that feed a
            binary last layer (the paper's (a)) split about evenly instead of being almost all +1.
    head:   Linear(feature_dim, num_classes), only for pretraining/distillation
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from extractor.layers import BinaryConvBN
from extractor.models._registry import make_pretrained_cfg, register_model

POOLS = ("avg", "avgmax")


@dataclass
class BiRealConfig:
    # square input side: small to stay fast on 2 cores (docs/distillation.md, "What transfer
    # says"; speed in bench/results/extractor.md)
    input_size: int = 112
    stem_width: int = 32  # real 3x3 stride-2 stem
    widths: tuple[int, ...] = (64, 128, 256, 512)  # one stage per width (last: features)
    depths: tuple[int, ...] = (2, 2, 2, 2)  # Bi-Real blocks per stage
    scale_weights: bool = True  # XNOR-Net alpha = mean|W| per output channel (folded at export)
    num_classes: int = 1000  # ImageNet-style head used only while pretraining
    feature_grid: int = 1  # features = final map pooled to a g x g grid, flattened
    pool: str = "avg"  # "avg" or "avgmax": the average and the maximum side by side

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)  # JSON round trip gives lists
        self.depths = tuple(int(d) for d in self.depths)
        if len(self.depths) == 1 and len(self.widths) > 1:
            self.depths = self.depths * len(self.widths)
        if len(self.widths) != len(self.depths) or not self.widths:
            raise ValueError("widths and depths must be non-empty and of equal length")
        if self.feature_grid < 1:
            raise ValueError("feature_grid must be >= 1")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, not {self.pool!r}")

    @property
    def feature_dim(self) -> int:
        return self.widths[-1] * self.feature_grid**2 * (2 if self.pool == "avgmax" else 1)


class BiRealBlock(nn.Module):
    """x + BN(conv3x3(sign(x + b), sign(W) * alpha)): binary conv on a real residual stream."""

    def __init__(self, channels: int, scale: bool) -> None:
        super().__init__()
        self.unit = BinaryConvBN(channels, channels, 3, 1, 1, threshold=True, scale=scale)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.unit(x)


def _downsample(cin: int, cout: int) -> nn.Sequential:
    """Real downsampling (QuickNet): average pool keeps all inputs, 1x1 conv changes width."""
    return nn.Sequential(
        nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
    )


@register_model("birealnet_112", BiRealConfig)
class BiRealNet(nn.Module):
    def __init__(self, config: BiRealConfig) -> None:
        super().__init__()
        self.config = config
        self.arch = "birealnet_112"
        # The whole image, not timm's centre crop: distillation shows the student crops of up to
        # the whole image and validates on whole images, and the centre crop lost clip-art
        # accuracy in transfer (docs/distillation.md, "Preprocessing").
        self.pretrained_cfg = make_pretrained_cfg(config.input_size, crop_pct=1.0)
        c = config.stem_width
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.PReLU(c)
        )
        stages = []
        for width, depth in zip(config.widths, config.depths, strict=True):
            blocks: list[nn.Module] = [_downsample(c, width)]
            blocks += [BiRealBlock(width, config.scale_weights) for _ in range(depth)]
            stages.append(nn.Sequential(*blocks))
            c = width
        self.stages = nn.Sequential(*stages)
        self.final = nn.Sequential(nn.BatchNorm2d(c), nn.PReLU(c))
        self.feature_dim = config.feature_dim
        self.feature_norm = nn.BatchNorm1d(self.feature_dim, affine=False)
        self.head = nn.Linear(self.feature_dim, config.num_classes)

    def pool(self, x: Tensor) -> Tensor:
        """(B, C, h, w) final map -> (B, feature_dim) features before `feature_norm`."""
        g = self.config.feature_grid
        avg = x.mean(dim=(2, 3)) if g == 1 else F.adaptive_avg_pool2d(x, g).flatten(1)
        if self.config.pool == "avg":
            return avg  # channel-major: (c, gy, gx)
        top = x.amax(dim=(2, 3)) if g == 1 else F.adaptive_max_pool2d(x, g).flatten(1)
        return torch.cat([avg, top], dim=1)  # (avg features, then max features)

    def feature_steps(self) -> list[Callable[[Tensor], Tensor]]:
        """`forward_features` as a chain of one-argument steps (the fast path runs it flat)."""
        return [
            self.stem,  # (B, stem, S/2, S/2)
            self.stages,  # (B, C, S/32, S/32)
            self.final,
            self.pool,
            self.feature_norm,  # (B, feature_dim), centred per feature
        ]

    def forward_features(self, x: Tensor) -> Tensor:
        for step in self.feature_steps():
            x = step(x)
        return x

    def forward_maps(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(`forward_features`, every stage's output map): distillation's intermediate targets."""
        x = self.stem(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return self.feature_norm(self.pool(self.final(x))), maps

    def forward_head(self, f: Tensor) -> Tensor:
        return self.head(f)  # (B, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
