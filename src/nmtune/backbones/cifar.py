"""Small CIFAR-style networks in plain torch: the backbones nmtune pre-trains itself.

Both models map images ``(B, C, H, W)`` to pooled features ``(B, out_dim)``; they carry no
classification head, so the state dict saved after pre-training is exactly what a feature
extractor loads. Any ``H, W >= 8`` works because every model ends in global average pooling.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validation import NMTuneError, check_int

__all__ = ["BasicBlock", "ConvBNReLU", "ResNet", "SmallCNN", "conv3x3", "shortcut"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3×3 convolution with 'same' padding and no bias (a BatchNorm follows, which has one)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class ConvBNReLU(nn.Sequential):
    """``conv3x3 -> BatchNorm2d -> ReLU``: ``(B, in, H, W) -> (B, out, H/stride, W/stride)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def shortcut(in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    """A residual block's skip path: the identity, or, when the block changes the shape
    (``stride > 1`` or a new width), a 1×1 convolution + BatchNorm (option B of He et al.)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """The two-convolution residual block of He et al. (2016).

    ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``. When the block changes the shape
    (``stride > 1`` or a new width) the shortcut is a 1×1 convolution + BatchNorm (option B of
    the paper), otherwise the identity.

    Parameters
    ----------
    in_channels, out_channels : int
    stride : int
        Stride of the first convolution; 2 halves ``H`` and ``W``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBNReLU(in_channels, out_channels, stride),
            conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _kaiming_init(module: nn.Module) -> None:
    """He-normal convolutions (fan-out, for ReLU nets), unit/zero BatchNorm, small linear."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _PooledFeatures(nn.Module):
    """A convolutional trunk, then global average pooling: ``(B, C, H, W) -> (B, out_dim)``."""

    out_dim: int

    def __init__(self, trunk: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.out_dim = out_dim
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or min(x.shape[-2:]) < 8:
            raise NMTuneError(
                f"{type(self).__name__} expects images of shape (B, C, H, W) with H, W >= 8, "
                f"got {tuple(x.shape)}"
            )
        return self.trunk(x).mean(dim=(2, 3))


class ResNet(_PooledFeatures):
    """CIFAR-style ResNet (He et al. 2016, §4.2): ``depth = 6n + 2`` layers.

    A 3×3 stem of ``width`` channels, then three stages of ``n`` :class:`BasicBlock` of widths
    ``width, 2*width, 4*width`` (stride 2 at the start of stages 2 and 3), then global average
    pooling. ResNet-8 at width 16 on 1-channel input has 77,104 parameters (78k with a
    10-class head).

    Parameters
    ----------
    depth : int
        8, 14, 20, 32, ... (``6n + 2``).
    width : int
        Channels of the first stage.
    in_channels : int
        Channels of the input images.

    Attributes
    ----------
    out_dim : int
        ``4 * width``, the feature dimension.
    """

    def __init__(self, depth: int = 8, width: int = 16, in_channels: int = 1) -> None:
        depth = check_int(depth, "depth", 1)
        width = check_int(width, "width", 1)
        in_channels = check_int(in_channels, "in_channels", 1)
        if (depth - 2) % 6 != 0 or depth < 8:
            raise NMTuneError(f"ResNet depth must be 6n+2, n >= 1 (8, 14, 20, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        layers: list[nn.Module] = [ConvBNReLU(in_channels, width)]
        channels = width
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(channels, stage_width, stride))
                channels = stage_width
        super().__init__(nn.Sequential(*layers), out_dim=channels)
        self.depth, self.width, self.in_channels = depth, width, in_channels


class SmallCNN(_PooledFeatures):
    """Four :class:`ConvBNReLU` layers of widths ``w, 2w, 4w, 8w``, each of the first three
    followed by 2×2 max pooling, then global average pooling.

    Parameters
    ----------
    width : int
        Channels of the first layer.
    in_channels : int
        Channels of the input images.

    Attributes
    ----------
    out_dim : int
        ``8 * width``, the feature dimension.
    """

    def __init__(self, width: int = 32, in_channels: int = 1) -> None:
        width = check_int(width, "width", 1)
        in_channels = check_int(in_channels, "in_channels", 1)
        widths = (width, 2 * width, 4 * width, 8 * width)
        layers: list[nn.Module] = []
        channels = in_channels
        for i, w in enumerate(widths):
            layers.append(ConvBNReLU(channels, w))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            channels = w
        super().__init__(nn.Sequential(*layers), out_dim=channels)
        self.width, self.in_channels = width, in_channels
