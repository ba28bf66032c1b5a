"""ImageNet-style ResNets (He et al. 2016) in plain torch, without the classification head.

The paper pre-trains ResNet-50 on (noisy) ImageNet-1K. torchvision cannot be installed beside
the CPU build of torch, so the architecture is written here from the CIFAR building blocks of
:mod:`nmtune.backbones.cifar`; it matches torchvision's ``resnet18`` / ``resnet50`` layer for
layer (v1.5: the stride of a bottleneck sits on its 3×3 convolution), minus ``fc``.
ResNet-50 has 23,508,032 parameters here: torchvision's 25,557,032 less the 2048×1000 + 1000
of its head.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validation import NMTuneError, check_int
from .cifar import BasicBlock, ConvBNReLU, _PooledFeatures, shortcut

__all__ = ["Bottleneck", "ImageNetResNet", "STAGES"]

#: depth -> (block, blocks per stage), Table 1 of He et al. (2016).
STAGES: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
#: Channels of the stem and of the first stage's 3×3 convolutions; each stage doubles them.
_BASE_WIDTH = 64


def _conv1x1_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
    )


class Bottleneck(nn.Module):
    """The 1×1 → 3×3 → 1×1 residual block of ResNet-50 and deeper.

    ``relu(bn(conv1x1(relu(bn(conv3x3(relu(bn(conv1x1(x))))))))`` plus the shortcut; the
    block widens ``mid_channels`` by :attr:`expansion` on the way out.

    Parameters
    ----------
    in_channels : int
    mid_channels : int
        Width of the 3×3 convolution; the output has ``4 * mid_channels`` channels.
    stride : int
        Stride of the 3×3 convolution (torchvision's "v1.5" placement).
    """

    expansion = 4

    def __init__(self, in_channels: int, mid_channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = self.expansion * mid_channels
        self.body = nn.Sequential(
            _conv1x1_bn(in_channels, mid_channels),
            nn.ReLU(inplace=True),
            ConvBNReLU(mid_channels, mid_channels, stride),
            _conv1x1_bn(mid_channels, out_channels),
        )
        self.shortcut = shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ImageNetResNet(_PooledFeatures):
    """ResNet-18/34/50/101/152 for ImageNet-sized inputs: ``(B, C, H, W) -> (B, out_dim)``.

    A 7×7 stride-2 stem of 64 channels and a 3×3 stride-2 max pool, four stages of widths
    64, 128, 256, 512 (stride 2 at the start of stages 2-4), then global average pooling.
    He-normal initialisation as in torchvision (no zero-initialised residual BatchNorm).

    Parameters
    ----------
    depth : {18, 34, 50, 101, 152}
    in_channels : int
        Channels of the input images.

    Attributes
    ----------
    out_dim : int
        512 for 18/34 (:class:`~nmtune.backbones.cifar.BasicBlock`), 2048 for 50 and deeper
        (:class:`Bottleneck`).
    """

    def __init__(self, depth: int = 50, in_channels: int = 3) -> None:
        depth = check_int(depth, "depth", 1)
        in_channels = check_int(in_channels, "in_channels", 1)
        if depth not in STAGES:
            raise NMTuneError(f"ImageNet ResNet depth must be one of {sorted(STAGES)}, got {depth}")
        kind, blocks = STAGES[depth]
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, _BASE_WIDTH, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(_BASE_WIDTH),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        channels = _BASE_WIDTH
        for stage, n_blocks in enumerate(blocks):
            width = _BASE_WIDTH * 2**stage
            for i in range(n_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                if kind == "basic":
                    layers.append(BasicBlock(channels, width, stride))
                    channels = width
                else:
                    layers.append(Bottleneck(channels, width, stride))
                    channels = Bottleneck.expansion * width
        super().__init__(nn.Sequential(*layers), out_dim=channels)
        self.depth, self.in_channels = depth, in_channels
