"""The paper's network: BinaryNet-style AlexNet (Krizhevsky 2012 shapes; Hubara et al. 2016).

Every layer after the first has binary weights and binary (sign) inputs; the first layer sees the
real image, with binary or real weights (`first_layer_binary_weights`). Each layer is
conv -> (max-pool) -> BN, the sign applied at the next layer's input. The feature vector is the
input of the last layer: fc7's BN output (4096-d) real-valued; its sign bits feed a binary head.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from extractor.layers import BinaryConvBN, BinaryLinearBN
from extractor.models._registry import make_pretrained_cfg, register_model


@dataclass
class AlexNetConfig:
    input_size: int = 224  # AlexNet's crop
    conv_widths: tuple[int, ...] = (96, 256, 384, 384, 256)  # conv1..conv5
    fc_width: int = 4096  # fc6 and fc7; fc7 is the feature vector
    first_layer_binary_weights: bool = True  # BinaryNet binarizes conv1's weights, not its input
    scale_weights: bool = False  # XNOR-Net alpha, off as in BinaryNet
    num_classes: int = 1000

    def __post_init__(self) -> None:
        self.conv_widths = tuple(int(w) for w in self.conv_widths)
        if len(self.conv_widths) != 5:
            raise ValueError("conv_widths needs 5 entries (conv1..conv5)")


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(3, 2)


@register_model("binary_alexnet", AlexNetConfig)
class BinaryAlexNet(nn.Module):
    def __init__(self, config: AlexNetConfig) -> None:
        super().__init__()
        self.config = config
        self.arch = "binary_alexnet"
        self.pretrained_cfg = make_pretrained_cfg(config.input_size)
        c1, c2, c3, c4, c5 = config.conv_widths
        s = config.input_size
        if config.first_layer_binary_weights:
            conv1: nn.Module = BinaryConvBN(
                3, c1, 11, 4, 2, binary_input=False, scale=config.scale_weights, pool=_pool()
            )
        else:
            conv1 = nn.Sequential(
                nn.Conv2d(3, c1, 11, 4, 2, bias=False), _pool(), nn.BatchNorm2d(c1)
            )
        self.features = nn.Sequential(
            conv1,  # (B, c1, 27, 27) at 224
            BinaryConvBN(c1, c2, 5, 1, 2, scale=config.scale_weights, pool=_pool()),  # 13x13
            BinaryConvBN(c2, c3, 3, 1, 1, scale=config.scale_weights),
            BinaryConvBN(c3, c4, 3, 1, 1, scale=config.scale_weights),
            BinaryConvBN(c4, c5, 3, 1, 1, scale=config.scale_weights, pool=_pool()),  # 6x6
        )
        s = (s + 4 - 11) // 4 + 1
        for _ in range(3):
            s = (s - 3) // 2 + 1
        if s < 1:
            raise ValueError(f"input_size {config.input_size} too small for AlexNet")
        f = config.fc_width
        self.fc6 = BinaryLinearBN(c5 * s * s, f, scale=config.scale_weights)
        self.fc7 = BinaryLinearBN(f, f, scale=config.scale_weights)
        self.head = BinaryLinearBN(f, config.num_classes, scale=config.scale_weights)  # fc8
        self.feature_dim = f

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (B, c5, 6, 6)
        x = self.fc6(x.flatten(1))  # (B, fc)
        return self.fc7(x)  # (B, fc): real; sign(x) is what fc8 sees

    def forward_head(self, f: Tensor) -> Tensor:
        return self.head(f)  # sign -> binary fc8 -> BN

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
