"""The networks nmtune builds itself, registered with a fixed, seeded random init.

CIFAR-style ResNet-8/14/20 and CNN-4 (architectures in :mod:`.cifar`) are what ``nmtune
pretrain`` and the studies train; ImageNet-style ResNet-18/50 (:mod:`.resnet`) are the paper's
backbones. Each factory imports torch and its architecture when called, so registering them
loads neither. An untrained built-in is named by its init seed (``weights_id``), so two seeds
never share a feature cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .registry import register_backbone

if TYPE_CHECKING:
    import torch

    from .torch_backbone import ImagePreprocess, TorchBackbone

#: ImageNet's per-channel mean and std in [0, 1] units (the torchvision / timm convention).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _seeded_init(build: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """Build a module with a fixed random init, leaving the global RNG as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _builtin_backbone(
    name: str, build: Callable[[], torch.nn.Module], seed: int, preprocess: Callable | None = None
) -> TorchBackbone:
    """A built-in model with the fixed init of ``seed``, named by that seed until trained."""
    from .torch_backbone import TorchBackbone

    module = _seeded_init(build, seed)
    return TorchBackbone(module, preprocess=preprocess, name=name, weights_id=f"init-seed:{seed}")


# -- CIFAR-style networks --------------------------------------------------------------------


def _cifar_backbone(name: str, cls_name: str, seed: int, **kwargs) -> TorchBackbone:
    from . import cifar

    return _builtin_backbone(name, lambda: getattr(cifar, cls_name)(**kwargs), seed)


def _register_resnet(depth: int) -> None:
    name = f"resnet{depth}"

    @register_backbone(
        name,
        modality="image",
        feature_dim=64,
        description=f"CIFAR-style ResNet-{depth} (plain torch), width 16: 64-d pooled features",
    )
    def _factory(width: int = 16, in_channels: int = 1, seed: int = 0) -> TorchBackbone:
        return _cifar_backbone(
            name, "ResNet", seed, depth=depth, width=width, in_channels=in_channels
        )


for _depth in (8, 14, 20):
    _register_resnet(_depth)


@register_backbone(
    "cnn4",
    modality="image",
    feature_dim=256,
    description="4-layer CNN (plain torch), width 32: 256-d pooled features",
)
def _cnn4(width: int = 32, in_channels: int = 1, seed: int = 0) -> TorchBackbone:
    return _cifar_backbone("cnn4", "SmallCNN", seed, width=width, in_channels=in_channels)


# -- ImageNet-style ResNets ------------------------------------------------------------------


def _imagenet_preprocess(in_channels: int, image_size: int) -> ImagePreprocess:
    """ImageNet normalisation; grey inputs get the BT.601 luma of the statistics, the same
    weights ImagePreprocess uses to turn RGB into grey."""
    from .torch_backbone import _LUMA, ImagePreprocess

    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if in_channels == 1:
        mean = (sum(w * m for w, m in zip(_LUMA, mean, strict=True)),)
        std = (sum(w * s for w, s in zip(_LUMA, std, strict=True)),)
    return ImagePreprocess(in_channels, image_size, mean, std)


def _register_imagenet_resnet(depth: int, feature_dim: int) -> None:
    name = f"resnet{depth}"

    @register_backbone(
        name,
        modality="image",
        feature_dim=feature_dim,
        description=f"ImageNet-style ResNet-{depth} (plain torch, torchvision's layout, no "
        f"head): {feature_dim}-d pooled features; ImageNet mean/std at image_size (224)",
    )
    def _factory(in_channels: int = 3, image_size: int = 224, seed: int = 0) -> TorchBackbone:
        from .resnet import ImageNetResNet

        return _builtin_backbone(
            name,
            lambda: ImageNetResNet(depth, in_channels),
            seed,
            preprocess=_imagenet_preprocess(in_channels, image_size),
        )


_register_imagenet_resnet(18, 512)
_register_imagenet_resnet(50, 2048)
