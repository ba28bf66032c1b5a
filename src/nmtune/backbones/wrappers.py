"""Torch modules that turn a third-party network into a pooled-features module: (B, ...) -> (B, D).

They live apart from their adapters (:mod:`.efficientnet`, :mod:`.hub`) so that the adapters,
and the registry entries beside them, import without torch.
"""

from __future__ import annotations

import torch
from torch import nn


class EfficientNetFeatures(nn.Module):
    """EfficientNet trunk + global average pool, no classifier: (B, 3, S, S) -> (B, 1280)."""

    in_channels = 3

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.out_dim = net._fc.in_features  # the width the classifier reads
        del self.net._fc  # unused here; keeping it would make the state_dict carry a dead head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


class ClipImageEncoder(nn.Module):
    """The image tower of an open_clip model: (B, 3, S, S) -> (B, embed_dim)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(x)


class MeanPooledEncoder(nn.Module):
    """A transformers encoder followed by attention-masked mean pooling: tokens -> (B, hidden)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, **extra) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
