"""NMTune's loss terms as pure functions on tensors, and the one table that names them
(docs/design.md §3.1).

All three regularisers take the transformed features ``z``; the consistency term also takes
the pre-trained features ``f`` it pulls the tuned view towards. :data:`REGULARISERS` fixes
their names, order, sign and the authors' weights once: the tuners' weights, the logged
``history_`` keys, :func:`nmtune_terms` and :func:`loss_coefficients` all follow it, so the
training step composes ``L = L_ce + w_mse·mse + w_cov·cov − w_svd·svd`` without restating it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def consistency_mse(z: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Mean over all N·D entries of (normalize(z) − normalize(f))², with ``f`` detached.

    Rows are L2-normalised; this keeps the tuned space close to the pre-trained one.
    """
    target = F.normalize(f.detach(), dim=1)
    return F.mse_loss(F.normalize(z, dim=1), target)


def covariance_penalty(z: torch.Tensor) -> torch.Tensor:
    """VICReg covariance term: Σ_{j≠k} C_jk² / D with C the (N−1)-normalised feature covariance."""
    n, d = z.shape
    zc = z - z.mean(dim=0, keepdim=True)
    cov = zc.T @ zc / (n - 1)
    off_diag = cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()
    return off_diag / d


def top_singular_ratio(z: torch.Tensor, top_k: int = 5) -> torch.Tensor:
    """Mean of the top-k of σ(z)/Σσ(z), σ the singular values of the *uncentred* z (maximised);
    0 for an all-zero z (e.g. constant features, standardised), not 0/0."""
    s = torch.linalg.svdvals(z.float())
    total = s.sum()
    ratios = s / torch.where(total > 0, total, torch.ones_like(total))
    return ratios[: min(top_k, ratios.numel())].mean()


@dataclass(frozen=True)
class Term:
    """One NMTune regulariser.

    Attributes
    ----------
    name : str
        Its key in ``history_`` and ``AUTHOR_WEIGHTS``; the tuner's weight is ``w_<name>``.
    sign : float
        +1 if the loss minimises it, −1 if it maximises it.
    author_weight : float
        The authors' weight.
    of : callable
        ``of(z, z_b, f, top_k) -> Tensor``: the term for all rows ``z``, the tuned view's rows
        ``z_b`` and their pre-trained target ``f``.
    """

    name: str
    sign: float
    author_weight: float
    of: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


#: NMTune's regularisers, in the order of every weight tuple and term vector.
REGULARISERS = (
    Term("mse", 1.0, 1.0, lambda z, z_b, f, top_k: consistency_mse(z_b, f)),
    Term("cov", 1.0, 0.04, lambda z, z_b, f, top_k: covariance_penalty(z)),
    Term("svd", -1.0, 0.001, lambda z, z_b, f, top_k: top_singular_ratio(z, top_k)),
)
#: Names of the logged loss terms: cross-entropy, then the regularisers.
TERMS = ("ce", *(term.name for term in REGULARISERS))
#: The authors' weights by term name; svd is maximised, hence subtracted.
AUTHOR_WEIGHTS = {term.name: term.author_weight for term in REGULARISERS}


def loss_coefficients(weights: Sequence[float]) -> list[float]:
    """Coefficients of the :data:`TERMS` vector in the loss, for regulariser ``weights``."""
    return [1.0, *(term.sign * w for term, w in zip(REGULARISERS, weights, strict=True))]


def nmtune_terms(
    z: torch.Tensor, f: torch.Tensor, top_k: int = 5, weights: Sequence[float] | None = None,
    unweighted: bool = True,
) -> tuple[torch.Tensor, ...]:
    """The unweighted regularisers ``(mse, cov, svd)`` (:data:`REGULARISERS`).

    Parameters
    ----------
    z : Tensor of shape (N, D) or (2N, D)
        Transformed features ``s ⊙ MLP(f) + f`` of one view, or of two views stacked (view a
        then view b). cov and svd use all rows.
    f : Tensor of shape (N, D)
        Pre-trained features of view a: the consistency target of the last N rows of ``z``
        (the tuned view; never receives gradients).
    top_k : int
        Number of leading singular values in the SVD term.
    weights : sequence of float or None
        The regularisers' weights in the loss: a term of weight 0 is computed without a graph
        (logged, but it costs no backward pass). None keeps every graph.
    unweighted : bool, default=True
        Evaluate the terms of weight 0 at all; False returns NaN for them (a training loop
        that logs them only now and then skips their cost, the SVD above all, on other steps).
    """
    n = f.shape[0]
    if z.ndim != 2 or f.ndim != 2 or z.shape[1] != f.shape[1] or z.shape[0] not in (n, 2 * n):
        raise ValueError(f"z and f must be row-aligned N×D tensors (z may stack two views), got "
                         f"{tuple(z.shape)} and {tuple(f.shape)}")
    z_b = z if z.shape[0] == n else z[n:]
    graphs = [True] * len(REGULARISERS) if weights is None else [w != 0 for w in weights]
    terms = []
    for term, graph in zip(REGULARISERS, graphs, strict=True):
        if not (graph or unweighted):
            terms.append(z.new_tensor(float("nan")))
            continue
        with torch.set_grad_enabled(torch.is_grad_enabled() and graph):
            terms.append(term.of(z, z_b, f, top_k))
    return tuple(terms)
