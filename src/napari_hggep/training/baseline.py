"""Trivial baseline (SPEC 3): ridge regression on colour / stain statistics of the patches."""
from __future__ import annotations

import numpy as np


def colour_features(patches: np.ndarray) -> np.ndarray:
    """Per patch: RGB and HED (haematoxylin, eosin, DAB) means, stds and quartiles."""
    from ..data.patches import to_tensor
    from ..model.hggep import stain_stats

    return np.concatenate([stain_stats(to_tensor(patches[i:i + 512])).numpy() for i in range(0, len(patches), 512)])


def ridge_solve(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Weights of ridge regression of centred ``y`` on standardised ``x``."""
    return np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ y)


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
