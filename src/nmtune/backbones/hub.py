"""Optional adapters for model hubs: ``timm:NAME``, ``open_clip:ARCH[:TAG]``, ``hf:NAME``.

Each library is imported only when its adapter is used, so nmtune runs without them; a missing
one raises an error naming the extra to install. Weights come from the library's own cache
(``pretrained=True``); offline, that cache must already hold them.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

from .._validation import NMTuneError
from .registry import register_backbone

if TYPE_CHECKING:
    import torch

    from .torch_backbone import TorchBackbone

EXTRAS = {
    "timm": "pip install 'nmtune[timm]'",
    "open_clip": "pip install 'nmtune[open_clip]'",
    "transformers": "pip install 'nmtune[transformers]'",
}


def import_extra(module: str):
    """Import an optional library or raise an NMTuneError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise NMTuneError(f"this backbone needs {module}: {EXTRAS[module]}") from None


def _hub_family(family: str, module: str, modality: str, description: str):
    """Register an adapter as the family ``FAMILY:NAME``, available once ``module`` is."""
    return register_backbone(
        f"{family}:", modality=modality, requires=(module,), install=EXTRAS[module],
        description=description,
    )


def _hub_error(library: str, name: str, exc: Exception) -> NMTuneError:
    return NMTuneError(f"{library} could not create {name!r}: {exc}")


@_hub_family("timm", "timm", "image", "timm image models, classifier removed (pooled features)")
def create_timm(model_name: str, pretrained: bool = True) -> TorchBackbone:
    """A timm image model without its classifier (``num_classes=0``): pooled features.

    Input size, mean and std come from the model's pretrained config.
    """
    from .torch_backbone import ImagePreprocess, TorchBackbone

    timm = import_extra("timm")
    try:
        module = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
    except Exception as exc:  # timm raises RuntimeError, KeyError, HF errors...
        raise _hub_error("timm", model_name, exc) from None
    config = timm.data.resolve_data_config({}, model=module)
    channels, height, _ = config["input_size"]
    preprocess = ImagePreprocess(
        in_channels=channels,
        image_size=height,
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
    )
    return TorchBackbone(
        module,
        preprocess=preprocess,
        name=f"timm:{model_name}",
        feature_dim=module.num_features,
        weights_id=f"timm:{model_name}:pretrained={pretrained}",
    )


# open_clip's defaults when a model does not state its own (OpenAI CLIP's training statistics).
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@_hub_family("open_clip", "open_clip", "image", "open_clip image encoders: ARCH or ARCH:TAG")
def create_open_clip(spec: str, pretrained: str | None = None) -> TorchBackbone:
    """The image encoder of an open_clip model, e.g. ``"ViT-B-32:laion2b_s34b_b79k"``.

    Parameters
    ----------
    spec : str
        ``ARCH`` or ``ARCH:TAG``; the tag names the pretrained weights.
    pretrained : str or None
        Overrides the tag in ``spec``.
    """
    from .torch_backbone import ImagePreprocess, TorchBackbone
    from .wrappers import ClipImageEncoder

    open_clip = import_extra("open_clip")
    arch, _, tag = spec.partition(":")
    tag = pretrained or tag or None
    try:
        clip = open_clip.create_model(arch, pretrained=tag)
    except Exception as exc:  # open_clip raises RuntimeError, HF errors...
        raise _hub_error("open_clip", spec, exc) from None
    visual = clip.visual
    size = visual.image_size
    preprocess = ImagePreprocess(
        in_channels=3,
        image_size=size[0] if isinstance(size, tuple | list) else int(size),
        mean=tuple(getattr(visual, "image_mean", None) or _CLIP_MEAN),
        std=tuple(getattr(visual, "image_std", None) or _CLIP_STD),
    )
    return TorchBackbone(
        ClipImageEncoder(clip),
        preprocess=preprocess,
        name=f"open_clip:{arch}",
        feature_dim=int(visual.output_dim),
        weights_id=f"open_clip:{arch}:{tag}",
    )


class Tokenize:
    """``list[str] -> dict of tensors`` with a transformers tokenizer (padding, truncation)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.identity = f"hf-tokenizer:{getattr(tokenizer, 'name_or_path', '?')}:max={max_length}"

    def __call__(self, batch) -> dict[str, torch.Tensor]:
        texts = list(batch)
        if not all(isinstance(t, str) for t in texts):
            raise NMTuneError("text backbones take a list of str")
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return dict(encoded)


@_hub_family("hf", "transformers", "text", "transformers text encoders, mean-pooled")
def create_hf(model_name: str, max_length: int = 256) -> TorchBackbone:
    """A transformers text encoder (``AutoModel``), mean-pooled over non-padding tokens.

    Loads from local files only (``HF_HUB_OFFLINE=1`` unless set otherwise).
    """
    from .torch_backbone import TorchBackbone
    from .wrappers import MeanPooledEncoder

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = import_extra("transformers")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_name)
        model = transformers.AutoModel.from_pretrained(model_name)
    except Exception as exc:  # OSError when offline and not cached, ValueError for bad configs
        raise _hub_error("transformers", model_name, exc) from None
    return TorchBackbone(
        MeanPooledEncoder(model),
        preprocess=Tokenize(tokenizer, max_length),
        name=f"hf:{model_name}",
        modality="text",
        feature_dim=int(model.config.hidden_size),
        weights_id=f"hf:{model_name}",
    )

