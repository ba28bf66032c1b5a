"""CLIP-style contrastive image–text pre-training: towers, the symmetric InfoNCE loss, training.

The pieces follow CLIP (Radford et al. 2021) and open_clip:

- :class:`ByteTokenizer` and :class:`TextTransformer`: a small causal transformer over UTF-8
  bytes, so nothing (no vocabulary, no merges) is downloaded; the text feature is the final
  layer's output at the end-of-text token.
- :class:`CLIPModel`: any image module (e.g. ``create_backbone("resnet8").module``) and a text
  tower, each followed by a bias-free linear projection to ``embed_dim``, and a learnable
  temperature stored as ``logit_scale = log(1/0.07)``; :meth:`CLIPModel.clamp_logit_scale_`
  keeps ``exp(logit_scale) <= 100`` after every optimiser step, as CLIP does.
- :func:`clip_loss`: the symmetric cross-entropy over the ``N x N`` similarity matrix. Under
  ``torch.distributed`` every rank gathers every rank's features, puts its own (with their
  gradient) back in its slot, and computes the loss of the whole global batch.

The training loop, :func:`nmtune.pretrain.train_clip`, and the run folder of
``nmtune pretrain --objective clip`` live in :mod:`nmtune.pretrain.clip`.

Gradient convention under DDP: each rank's loss *equals* the one-process loss of the
concatenated batch, but its gradient flows only through the local features (and ``1/W`` of
the shared temperature), so the ranks' gradients sum to the one-process gradient and DDP's
average is ``1/W`` of it.
``train_clip`` back-propagates ``W · loss`` so that a ``W``-process run of batch ``B`` takes
the same optimiser steps as a one-process run of batch ``W·B`` (up to float rounding, and as
long as the image tower has no BatchNorm, whose statistics stay per rank).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ._validation import NMTuneError

__all__ = [
    "ByteTokenizer",
    "CLIPModel",
    "TextTransformer",
    "clip_loss",
    "gather_features",
]

#: CLIP's initial temperature 0.07, stored as a log scale.
INIT_LOGIT_SCALE = math.log(1 / 0.07)
#: CLIP clamps the scale ``exp(logit_scale)`` at 100 to keep training stable.
MAX_LOGIT_SCALE = 100.0


class ByteTokenizer:
    """UTF-8 bytes as tokens: ``[SOT, b0+3, b1+3, ..., EOT, PAD...]``, truncated to fit.

    Parameters
    ----------
    context_length : int
        Tokens per text, start and end markers included; longer texts lose their tail.
    """

    PAD, SOT, EOT = 0, 1, 2
    vocab_size = 256 + 3

    def __init__(self, context_length: int = 64):
        if context_length < 3:
            raise NMTuneError(f"context_length must be >= 3, got {context_length}")
        self.context_length = context_length

    def __call__(self, texts) -> torch.Tensor:
        """Token ids, LongTensor of shape (len(texts), context_length)."""
        if isinstance(texts, str):
            raise NMTuneError("tokenizer takes a list of texts, got one str")
        tokens = torch.full((len(texts), self.context_length), self.PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            body = [b + 3 for b in str(text).encode("utf-8")[: self.context_length - 2]]
            ids = [self.SOT, *body, self.EOT]
            tokens[row, : len(ids)] = torch.tensor(ids)
        return tokens


class TextTransformer(nn.Module):
    """A small causal transformer encoder over byte tokens (CLIP's text tower, scaled down).

    Parameters
    ----------
    width, layers, heads : int
        Model width, number of pre-norm encoder layers, attention heads.
    context_length : int
        Tokens per text (see :class:`ByteTokenizer`).

    Attributes
    ----------
    tokenizer : ByteTokenizer
    out_dim : int
        Feature width (``width``).
    """

    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4, context_length: int = 64):
        super().__init__()
        if width % heads:
            raise NMTuneError(f"width {width} must be divisible by heads {heads}")
        self.tokenizer = ByteTokenizer(context_length)
        self.out_dim = width
        self.token_embedding = nn.Embedding(ByteTokenizer.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            4 * width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(width)
        causal = torch.full((context_length, context_length), float("-inf")).triu(1)
        self.register_buffer("causal_mask", causal, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Features (B, width) at each text's end-of-text token."""
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        # Causal attention, as CLIP: the EOT token sees its text and never the padding after it.
        x = self.encoder(x, mask=self.causal_mask[:length, :length], is_causal=True)
        x = self.ln_final(x)
        eot = (tokens == ByteTokenizer.EOT).int().argmax(dim=1)
        return x[torch.arange(x.shape[0], device=x.device), eot]


class CLIPModel(nn.Module):
    """An image tower and a text tower projected into one embedding space.

    Parameters
    ----------
    image_tower : nn.Module
        Maps images (B, C, H, W) to features (B, D) or (B, D, 1, 1); e.g.
        ``create_backbone("resnet8").module``.
    text_tower : nn.Module
        Maps token ids to features (B, D_text); it must carry a ``tokenizer`` (text list ->
        token ids) and ``out_dim``, as :class:`TextTransformer` does.
    embed_dim : int
        Width of the shared embedding.
    image_dim : int, optional
        Width of the image features; read from ``image_tower.out_dim`` when omitted.
    """

    def __init__(
        self,
        image_tower: nn.Module,
        text_tower: nn.Module,
        embed_dim: int = 64,
        image_dim: int | None = None,
    ):
        super().__init__()
        image_dim = image_dim if image_dim is not None else getattr(image_tower, "out_dim", None)
        if image_dim is None:
            raise NMTuneError(
                f"image feature width unknown: pass image_dim= or give "
                f"{type(image_tower).__name__} an out_dim attribute"
            )
        for attr in ("tokenizer", "out_dim"):
            if not hasattr(text_tower, attr):
                raise NMTuneError(f"text tower {type(text_tower).__name__} lacks {attr!r}")
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.image_projection = nn.Linear(image_dim, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_tower.out_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
        self.embed_dim = embed_dim

    def tokenize(self, texts) -> torch.Tensor:
        return self.text_tower.tokenizer(texts)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.image_projection(self.image_tower(images).flatten(1))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.text_projection(self.text_tower(tokens))
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        """``(image_features, text_features, scale)``: L2-normalised (B, E) each, and exp(τ)."""
        return self.encode_image(images), self.encode_text(tokens), self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep ``exp(logit_scale)`` in ``[1, 100]``; call after every optimiser step."""
        self.logit_scale.clamp_(0.0, math.log(MAX_LOGIT_SCALE))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """Every rank's ``features`` concatenated in rank order; the local slot keeps its gradient.

    Outside ``torch.distributed`` (or with one process) returns ``features`` unchanged. All
    ranks must pass the same shape (drop the last incomplete batch).
    """
    if not _distributed():
        return features
    parts = [torch.empty_like(features) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, features.detach().contiguous())
    # all_gather returns copies without autograd history: put the local tensor back so the
    # gradient of this rank's features flows; the other ranks compute theirs themselves.
    parts[dist.get_rank()] = features
    return torch.cat(parts)


def _rank_share(scale: torch.Tensor | float) -> torch.Tensor | float:
    """``scale`` with its value kept and ``1/W`` of its gradient.

    Each rank differentiates the global loss through its own features only, so summing the
    ranks' gradients counts each feature once; the shared scale would be counted ``W`` times.
    """
    if not _distributed() or not isinstance(scale, torch.Tensor):
        return scale
    share = scale / dist.get_world_size()
    return share + (scale - share).detach()


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss over the global batch.

    Parameters
    ----------
    image_features, text_features : Tensor of shape (B, E)
        L2-normalised embeddings of ``B`` matching pairs (row i of each is one pair).
    scale : Tensor or float
        ``exp(logit_scale)``, the inverse temperature.

    Returns
    -------
    loss : scalar Tensor
        ``(CE(S, arange) + CE(Sᵀ, arange)) / 2`` with ``S = scale · I Tᵀ`` over all ranks'
        pairs: the same value on every rank.
    """
    if image_features.shape != text_features.shape:
        raise NMTuneError(
            f"image and text features differ in shape: {tuple(image_features.shape)} vs "
            f"{tuple(text_features.shape)}"
        )
    images, texts = gather_features(image_features), gather_features(text_features)
    logits = _rank_share(scale) * images @ texts.T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
