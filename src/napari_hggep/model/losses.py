"""MSE and the zero-inflated negative binomial (ZINB) negative log-likelihood."""
from __future__ import annotations

import torch

EPS = 1e-8


def mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    err = (pred - target) ** 2
    if mask is not None:
        return err[mask].mean()
    return err.mean()


def size_factors(counts: torch.Tensor) -> torch.Tensor:
    """Spot library size divided by the median library size (N x 1)."""
    lib = counts.sum(dim=1, keepdim=True).clamp_min(1.0)
    return lib / lib.median().clamp_min(1.0)


def zinb_nll(
    counts: torch.Tensor,
    mean: torch.Tensor,
    disp: torch.Tensor,
    pi: torch.Tensor,
    size_factor: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Negative log-likelihood of ``counts`` under ZINB(mean * size_factor, disp, pi).

    ``disp`` is the inverse dispersion (NB ``r``; variance = mu + mu^2 / r) and ``pi``
    the dropout probability. Evaluated in log space: finite for zero counts, counts
    of 1e5 and tiny dispersions.
    """
    x = counts.float()
    mu = mean.float()
    if size_factor is not None:
        mu = mu * size_factor.float()
    mu = mu.clamp_min(EPS)
    r = disp.float().clamp_min(EPS)
    p = pi.float().clamp(EPS, 1 - 1e-6)
    log_r_mu = torch.log(r + mu)
    # log NB(x; mu, r)
    nb = (
        torch.lgamma(x + r)
        - torch.lgamma(r)
        - torch.lgamma(x + 1.0)
        + r * (torch.log(r) - log_r_mu)
        + x * (torch.log(mu) - log_r_mu)
    )
    nb_zero = r * (torch.log(r) - log_r_mu)  # log NB(0)
    # zero: log(pi + (1 - pi) * NB(0)); positive: log(1 - pi) + log NB(x)
    log_zero = torch.logaddexp(torch.log(p), torch.log1p(-p) + nb_zero)
    log_pos = torch.log1p(-p) + nb
    ll = torch.where(x < 0.5, log_zero, log_pos)
    nll = -ll
    if reduction == "mean":
        return nll.mean()
    if reduction == "sum":
        return nll.sum()
    return nll


def hggep_loss(out: dict, target: torch.Tensor, counts: torch.Tensor | None = None,
               zinb_weight: float = 0.25, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE on normalised expression + ``zinb_weight`` x ZINB NLL on raw counts (SPEC 2.8)."""
    loss = mse(out["expr"], target, mask)
    if counts is not None and zinb_weight > 0 and "mean" in out:
        sf = size_factors(counts)
        nll = zinb_nll(counts, out["mean"], out["disp"], out["pi"], sf, reduction="none")
        loss = loss + zinb_weight * (nll[mask].mean() if mask is not None else nll.mean())
    return loss
