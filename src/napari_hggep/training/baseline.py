"""Trivial baseline (SPEC 3): ridge regression on colour / stain statistics of the patches."""
from __future__ import annotations

import numpy as np


def stain_stats(patches):
    """Per patch (torch ``N x 3 x P x P`` in [0, 1]), for R, G, B and the H, E, D stain
    densities: mean, std and quartiles (``N x 30``)."""
    import torch

    from ..data.stain import rgb_to_hed_torch

    x = patches.float()
    hed = rgb_to_hed_torch(x).clamp_min(0)
    feats = []
    q = torch.tensor([0.25, 0.5, 0.75])
    for chans in (x, hed):
        flat = chans.flatten(2)  # N x 3 x P
        qs = torch.quantile(flat, q.to(flat.device), dim=2)  # 3 x N x 3
        feats += [flat.mean(2), flat.std(2), *qs.unbind(0)]
    return torch.cat(feats, dim=1)


def colour_features(patches: np.ndarray) -> np.ndarray:
    """Per patch: RGB and HED (haematoxylin, eosin, DAB) means, stds and quartiles."""
    from ..data.patches import to_tensor

    return np.concatenate([stain_stats(to_tensor(patches[i:i + 512])).numpy() for i in range(0, len(patches), 512)])


def ridge_solve(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Weights of ridge regression of centred ``y`` on standardised ``x``."""
    return np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ y)


ALPHAS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


def choose_alpha(xs: list[np.ndarray], ys: list[np.ndarray], score, alphas=ALPHAS, default: float = 300.0) -> float:
    """Ridge strength by leave-one-group-out over the training groups (sections): the alpha
    whose held-out ``score(pred, group_index)`` is best on average. One group: ``default``."""
    if len(xs) < 2:
        return default
    best, best_alpha = -np.inf, default
    for a in alphas:
        s = []
        for i in range(len(xs)):
            x = np.concatenate([v for j, v in enumerate(xs) if j != i])
            y = np.concatenate([v for j, v in enumerate(ys) if j != i])
            w = ridge_solve(x, y - y.mean(0), a)
            s.append(score(xs[i] @ w + y.mean(0), i))
        if np.mean(s) > best:
            best, best_alpha = float(np.mean(s)), a
    return best_alpha


def ridge_scores(xs: list[np.ndarray], ys: list[np.ndarray], score, alphas=ALPHAS) -> np.ndarray:
    """The held-out ``score(pred, group_index)`` of each alpha, averaged leave-one-group-out: what
    :func:`choose_alpha` compares, with one eigendecomposition per fold for all alphas (of the
    features' Gram matrix, or of the spots' when there are fewer spots than features)."""
    alphas = np.asarray(alphas, float)
    out = np.zeros(len(alphas))
    for i in range(len(xs)):
        x = np.concatenate([v for j, v in enumerate(xs) if j != i]).astype(np.float64)
        y = np.concatenate([v for j, v in enumerate(ys) if j != i]).astype(np.float64)
        mean = y.mean(0)
        yc = y - mean
        if x.shape[0] >= x.shape[1]:  # (X'X + a I)^-1 X'y
            lam, v = np.linalg.eigh(x.T @ x)
            left, right = xs[i] @ v, v.T @ (x.T @ yc)
        else:  # X'(XX' + a I)^-1 y: the same weights, through the spots
            lam, u = np.linalg.eigh(x @ x.T)
            left, right = (xs[i] @ x.T) @ u, u.T @ yc
        for k, a in enumerate(alphas):
            out[k] += score(left @ (right / (np.maximum(lam, 0) + a)[:, None]) + mean, i)
    return out / max(len(xs), 1)


class RidgeBaseline:
    def __init__(self, alpha: float = 10.0):
        self.alpha = alpha

    def fit(self, feats: np.ndarray, y: np.ndarray) -> "RidgeBaseline":
        self.mu, self.sd = feats.mean(0), feats.std(0) + 1e-8
        x = (feats - self.mu) / self.sd
        self.ymu = y.mean(0)
        self.w = ridge_solve(x, y - self.ymu, self.alpha)
        return self

    def predict(self, feats: np.ndarray) -> np.ndarray:
        return ((feats - self.mu) / self.sd) @ self.w + self.ymu
