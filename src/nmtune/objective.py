"""NMTune's regularisers as pure functions on tensors (docs/design.md §3.1).

All three take the transformed features ``z`` (N×D); the consistency term also takes the
pre-trained features ``f`` it pulls ``z`` towards. None of them is weighted here: the tuner
composes ``L = L_ce + w_mse·mse + w_cov·cov − w_svd·svd``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: The authors' weights for (mse, cov, svd); svd is maximised, hence subtracted.
AUTHOR_WEIGHTS = {"mse": 1.0, "cov": 0.04, "svd": 0.001}


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
    """Mean of the top-k of σ(z)/Σσ(z), σ the singular values of the *uncentred* z (maximised)."""
    s = torch.linalg.svdvals(z.float())
    ratios = s / s.sum()
    return ratios[: min(top_k, ratios.numel())].mean()


def nmtune_terms(
    z: torch.Tensor, f: torch.Tensor, top_k: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three unweighted NMTune terms ``(mse, cov, svd)`` for row-aligned ``z`` and ``f``.

    Parameters
    ----------
    z : Tensor of shape (N, D)
        Transformed features ``s ⊙ MLP(f) + f``.
    f : Tensor of shape (N, D)
        Pre-trained features (the consistency target; never receives gradients).
    top_k : int
        Number of leading singular values in the SVD term.
    """
    if z.shape != f.shape or z.ndim != 2:
        raise ValueError(f"z and f must be row-aligned N×D tensors, got {tuple(z.shape)} and "
                         f"{tuple(f.shape)}")
    return consistency_mse(z, f), covariance_penalty(z), top_singular_ratio(z, top_k)
