"""Any ``torch.nn.Module`` as a frozen backbone: preprocessing, device, weights, identity."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._hashing import callable_identity, sha256_file, state_digest
from .._torch import autocast
from .._validation import NMTuneError, as_float_array
from .base import Backbone

# ITU-R BT.601 luma weights: the usual RGB -> grey conversion (PIL's "L" mode uses them too).
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class ImagePreprocess:
    """Turn a batch of ``Dataset`` images into the tensor a module expects.

    Steps, in order: channel conversion (grey -> RGB by repetition, RGB -> grey by BT.601
    luma), optional bilinear resize to ``image_size`` (antialiased when shrinking), then
    ``(x - mean) / std`` per channel.

    Parameters
    ----------
    in_channels : int
        Channels the module's first layer takes (1 or 3).
    image_size : int or None
        Square side to resize to; ``None`` keeps the input size.
    mean, std : tuple of float
        Per-channel normalisation, one value (broadcast) or ``in_channels`` values, in units of
        the [0, 1] input scale.
    """

    in_channels: int = 3
    image_size: int | None = None
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def __post_init__(self):
        if self.in_channels not in (1, 3):
            raise NMTuneError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.image_size is not None and self.image_size < 1:
            raise NMTuneError(f"image_size must be a positive int, got {self.image_size}")
        for label, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.in_channels):
                raise NMTuneError(
                    f"{label} needs 1 or {self.in_channels} values, got {len(values)}"
                )
        if min(self.std) <= 0:
            raise NMTuneError(f"std must be positive, got {self.std}")

    @property
    def identity(self) -> str:
        return repr(self)

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        """Parameters: ``batch`` (B, C, H, W) float in [0, 1]. Returns (B, in_channels, S, S)."""
        x = torch.as_tensor(as_float_array(batch, "image batch", ndim=(4,)), dtype=torch.float32)
        # Resizing and channel mixing are both linear, so they commute: resize whichever side
        # has fewer channels (grey before it becomes RGB: 3x less work).
        if x.shape[1] > self.in_channels:
            x = _convert_channels(x, self.in_channels)
        x = self._resize(x)
        x = _convert_channels(x, self.in_channels)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (x - mean) / std

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if size is None or x.shape[-2:] == (size, size):
            return x
        shrinking = min(x.shape[-2:]) > size
        return F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking
        )


def _convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if have == 3 and channels == 1:
        weights = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)
    raise NMTuneError(f"cannot convert {have}-channel images to {channels} channels")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict saved by ``torch.save`` (tensors only) or ``safetensors``.

    A ``torch.save`` checkpoint may nest the weights under ``"state_dict"`` or ``"model"``.
    Pickled code is refused (``weights_only=True``): a weights file must not run code.
    """
    path = Path(path)
    if not path.is_file():
        raise NMTuneError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise NMTuneError(
                f"{path} is a safetensors file; install it with `pip install safetensors`"
            ) from None
        return load_file(str(path), device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or code-bearing pickle
        raise NMTuneError(f"{path} is not a readable tensor-only torch file: {exc}") from None
    for nested in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(nested), dict):
            state = state[nested]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NMTuneError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return state


class TorchBackbone(Backbone):
    """A frozen ``nn.Module`` behind the :class:`Backbone` interface.

    Parameters
    ----------
    module : nn.Module
        Maps a preprocessed batch to features, (B, D) (or (B, D, 1, 1), flattened). It stays
        trainable: pre-training wraps ``backbone.module`` with a head and trains it in place.
    preprocess : callable or None
        ``batch -> tensor`` on the CPU. ``None`` uses :class:`ImagePreprocess` with the
        module's ``in_channels`` attribute (default 3) for images; text modules must supply one.
        Its ``identity`` attribute (or, failing that, qualified name) enters :meth:`identity`.
    name : str
    modality : {"image", "text"}
    weights_id : str or None
        Provenance of the weights (e.g. ``"sha256:..."`` of the file they came from).
    feature_dim : int or None
        Output width; read from ``module.out_dim`` when not given.
    """

    def __init__(
        self,
        module: nn.Module,
        preprocess: Callable | None = None,
        name: str = "torch",
        modality: str = "image",
        weights_id: str | None = None,
        feature_dim: int | None = None,
    ):
        if not isinstance(module, nn.Module):
            raise NMTuneError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if modality not in ("image", "text"):
            raise NMTuneError(f"modality must be 'image' or 'text', got {modality!r}")
        if preprocess is None:
            if modality == "text":
                raise NMTuneError("a text TorchBackbone needs a preprocess (tokenizer) function")
            preprocess = ImagePreprocess(in_channels=getattr(module, "in_channels", 3))
        feature_dim = feature_dim if feature_dim is not None else getattr(module, "out_dim", None)
        if feature_dim is None:
            raise NMTuneError(
                f"feature_dim unknown: pass feature_dim= or give {type(module).__name__} "
                "an out_dim attribute"
            )
        self.module = module
        self.preprocess = preprocess
        self.name = name
        self.modality = modality
        self.weights_id = weights_id
        self.feature_dim = int(feature_dim)
        self.device = torch.device("cpu")
        self.to(self.device)

    def to(self, device: str | torch.device) -> TorchBackbone:
        """Move the module; on CPU also make it channels-last, which oneDNN convolves faster."""
        self.device = torch.device(device)
        memory_format = torch.channels_last if self.device.type == "cpu" else torch.preserve_format
        self.module.to(device=self.device, memory_format=memory_format)
        return self

    def load_weights(self, path: str | os.PathLike) -> TorchBackbone:
        """Load a state_dict file into the module (strictly); its sha256 becomes ``weights_id``."""
        state = load_state_dict_file(path)
        try:
            result = self.module.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches raise even when strict=False
            raise NMTuneError(f"{path} does not fit {self.name}: {exc}") from None
        if result.missing_keys or result.unexpected_keys:
            raise NMTuneError(
                f"{path} does not fit {self.name}: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]} (of {len(result.missing_keys)} and "
                f"{len(result.unexpected_keys)})"
            )
        self.to(self.device)
        self.weights_id = f"sha256:{sha256_file(path)}"
        return self

    def identity(self) -> str:
        return (
            f"torch:{self.name}|{type(self.module).__module__}.{type(self.module).__qualname__}"
            f"|dim={self.feature_dim}|preprocess={callable_identity(self.preprocess)}"
            f"|weights={self.weights_id}"
            f"|state=sha256:{state_digest(self.module)}"
        )

    def _to_device(self, x):
        if isinstance(x, dict):  # tokenizer output
            return {k: self._to_device(v) for k, v in x.items()}
        if not isinstance(x, torch.Tensor):
            return x
        x = x.to(self.device, non_blocking=True)
        if x.dim() == 4 and self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward_preprocessed(self, x) -> torch.Tensor:
        """Run the module in eval mode without autograd on an already preprocessed batch.

        Returns (B, feature_dim) on the module's device. The module's train/eval mode is
        restored afterwards, so a pre-training loop that embeds mid-training is unaffected.
        """
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.inference_mode(), autocast(self.device):
                x = self._to_device(x)
                out = self.module(**x) if isinstance(x, dict) else self.module(x)
        finally:
            self.module.train(was_training)
        out = out.reshape(out.shape[0], -1)
        if out.shape[1] != self.feature_dim:
            raise NMTuneError(
                f"{self.name} returned {out.shape[1]} features per sample, expected "
                f"{self.feature_dim}"
            )
        return out

    def embed(self, batch) -> np.ndarray:
        """Features of one batch. Returns ndarray of shape (B, feature_dim), float32."""
        out = self.forward_preprocessed(self.preprocess(batch))
        return out.float().cpu().numpy()
