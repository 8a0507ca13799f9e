"""Trivial baseline (SPEC 3): ridge regression on colour / stain statistics of the patches."""
from __future__ import annotations

import numpy as np


def colour_features(patches: np.ndarray) -> np.ndarray:
    """Per patch: RGB and HED (haematoxylin, eosin, DAB) means, stds and quartiles."""
    from skimage.color import rgb2hed

    x = patches.astype(np.float32) / 255.0
    feats = []
    for chans in (x, np.stack([rgb2hed(p) for p in x])):
        flat = chans.reshape(len(chans), -1, 3)
        feats += [flat.mean(1), flat.std(1), *np.percentile(flat, [25, 50, 75], axis=1)]
    return np.concatenate(feats, axis=1)


class RidgeBaseline:
    def __init__(self, alpha: float = 10.0):
        self.alpha = alpha

    def fit(self, feats: np.ndarray, y: np.ndarray) -> "RidgeBaseline":
        self.mu, self.sd = feats.mean(0), feats.std(0) + 1e-8
        x = (feats - self.mu) / self.sd
        self.ymu = y.mean(0)
        a = x.T @ x + self.alpha * np.eye(x.shape[1])
        self.w = np.linalg.solve(a, x.T @ (y - self.ymu))
        return self

    def predict(self, feats: np.ndarray) -> np.ndarray:
        return ((feats - self.mu) / self.sd) @ self.w + self.ymu
