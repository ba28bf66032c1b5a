"""Zero-shot classification with a CLIP text tower, by prompt templates (CLIP_benchmark's protocol).

Each class gets one weight vector: the text tower embeds the class name in every template,
each embedding is L2-normalised, the class's embeddings are averaged and the mean is
normalised again. An image is scored against class ``k`` by
``scale · normalise(image_features) · w_k`` (``scale`` = 100, as CLIP_benchmark does).

From a run folder of ``nmtune pretrain --objective clip``:
:func:`nmtune.pretrain.load_clip_run` rebuilds the trained model, and
:func:`embed_image_features` projects the frozen image-tower features that
the study's feature cache holds into the shared embedding, so zero-shot scores the very
features the tuned methods are fitted on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ._validation import NMTuneError

__all__ = ["DEFAULT_TEMPLATES", "ZeroShotClassifier", "class_weights", "embed_image_features",
           "zeroshot_logits"]

#: A few of CLIP's ImageNet prompt templates; ``{}`` is replaced by the class name.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a drawing of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of the {}.",
    "itap of a {}.",
)

#: CLIP_benchmark's fixed logit scale for zero-shot evaluation.
ZEROSHOT_SCALE = 100.0


@torch.no_grad()
def class_weights(model, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """One unit-norm text embedding per class, averaged over ``templates``.

    Parameters
    ----------
    model : CLIPModel
        Anything with ``tokenize(texts)`` and ``encode_text(tokens, normalize=...)``.
    classnames : sequence of str, length K
    templates : sequence of str
        Each holds one ``{}`` for the class name.

    Returns
    -------
    weights : Tensor of shape (E, K)
    """
    if not classnames or not templates:
        raise NMTuneError("zero-shot needs at least one class name and one template")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise NMTuneError(f"each template needs exactly one '{{}}' for the class name: {bad[0]!r}")
    columns = []
    for name in classnames:
        texts = [template.format(name) for template in templates]
        embedded = F.normalize(model.encode_text(model.tokenize(texts), normalize=False), dim=-1)
        columns.append(F.normalize(embedded.mean(dim=0), dim=0))
    return torch.stack(columns, dim=1)


def zeroshot_logits(
    image_features: torch.Tensor, weights: torch.Tensor, scale: float = ZEROSHOT_SCALE
) -> torch.Tensor:
    """``scale · normalise(image_features) @ weights``, shape (N, K)."""
    return scale * F.normalize(image_features, dim=-1) @ weights


class ZeroShotClassifier(ClassifierMixin, BaseEstimator):
    """A scikit-learn classifier from a CLIP model and class names; ``fit`` trains nothing.

    Parameters
    ----------
    model : CLIPModel
    classnames : sequence of str
        Class ``k``'s name; predictions are indices into it (nmtune's label convention).
    templates : sequence of str
        Prompt templates, each with one ``{}``.
    scale : float
        Logit scale (100 in CLIP_benchmark); it changes ``predict_proba``, not ``predict``.
    batch_size : int
        Images encoded per forward pass when ``X`` holds images.

    Attributes
    ----------
    weights_ : ndarray of shape (E, K)
        Class embeddings.
    classes_ : ndarray of shape (K,)
        ``arange(K)``.
    """

    def __init__(
        self,
        model,
        classnames: Sequence[str],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        scale: float = ZEROSHOT_SCALE,
        batch_size: int = 256,
    ):
        self.model = model
        self.classnames = classnames
        self.templates = templates
        self.scale = scale
        self.batch_size = batch_size

    def fit(self, X=None, y=None):
        """Embed the class prompts; ``X`` and ``y`` are ignored (zero-shot uses no labels)."""
        was_training = self.model.training
        self.model.eval()
        try:
            weights = class_weights(self.model, list(self.classnames), list(self.templates))
        finally:
            self.model.train(was_training)
        self.weights_ = weights.float().cpu().numpy()
        self.classes_ = np.arange(len(self.classnames))
        return self

    def decision_function(self, X) -> np.ndarray:
        """Logits (N, K) for image features (N, E) or images (N, C, H, W)."""
        check_is_fitted(self, "weights_")
        features = self._image_features(X)
        weights = torch.from_numpy(self.weights_)
        return zeroshot_logits(features, weights, self.scale).numpy()

    def predict_proba(self, X) -> np.ndarray:
        logits = self.decision_function(X)
        return torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]

    @torch.no_grad()
    def _image_features(self, X) -> torch.Tensor:
        X = torch.as_tensor(np.asarray(X, dtype=np.float32))
        if X.ndim == 2:
            if X.shape[1] != self.weights_.shape[0]:
                raise NMTuneError(
                    f"image features have width {X.shape[1]}, the model embeds into "
                    f"{self.weights_.shape[0]}"
                )
            return X
        if X.ndim != 4:
            raise NMTuneError(
                f"X must be image features (N, E) or images (N, C, H, W), "
                f"got shape {tuple(X.shape)}"
            )
        was_training = self.model.training
        self.model.eval()
        try:
            device = next(self.model.parameters()).device
            parts = [
                self.model.encode_image(X[i : i + self.batch_size].to(device)).float().cpu()
                for i in range(0, len(X), self.batch_size)
            ]
        finally:
            self.model.train(was_training)
        return torch.cat(parts)


@torch.no_grad()
def embed_image_features(model, features) -> np.ndarray:
    """Image-tower features (N, D), as the feature cache holds them, projected into the shared
    embedding (N, E): ``encode_image`` without running the tower again."""
    x = torch.from_numpy(np.array(features, dtype=np.float32))  # a copy: the cache is read-only
    return model.image_projection(x.to(model.image_projection.weight.device)).cpu().numpy()
