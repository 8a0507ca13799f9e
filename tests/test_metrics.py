import numpy as np
import pytest
from scipy import stats

from napari_hggep.training.baseline import RidgeBaseline
from napari_hggep.training.metrics import adjusted_rand_index, gene_pcc, gene_ssim, slide_metrics
from napari_hggep.training.targets import normalise_counts


def test_pcc_matches_scipy_and_skips_constant(rng):
    a, b = rng.normal(size=(40, 5)), rng.normal(size=(40, 5))
    b[:, 4] = 1.0
    r = gene_pcc(a, b)
    for j in range(4):
        assert r[j] == pytest.approx(stats.pearsonr(a[:, j], b[:, j])[0])
    assert np.isnan(r[4])
    m = slide_metrics(a, b)
    assert m["n_genes_constant"] == 1 and m["n_genes_scored"] == 4


def test_ssim_identity_and_range(rng):
    a = rng.random((30, 3))
    assert np.allclose(gene_ssim(a, a), 1.0)
    assert (gene_ssim(a, rng.random((30, 3))) < 1).all()


def test_ari():
    assert adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    from sklearn.metrics import adjusted_rand_score

    a, b = [0, 0, 1, 1, 2, 2, 0], [0, 1, 1, 1, 2, 0, 0]
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b))


def test_targets():
    c = np.array([[0, 10, 10], [5, 5, 0]], float)
    t = normalise_counts(c)
    assert np.allclose(t, np.log1p(c / c.sum(1, keepdims=True) * 15))  # median total of 20 and 10


def test_ridge_recovers_linear_signal(rng):
    x = rng.normal(size=(200, 6))
    y = x @ rng.normal(size=(6, 3)) + 0.01 * rng.normal(size=(200, 3))
    p = RidgeBaseline(alpha=1e-3).fit(x, y).predict(x)
    assert np.corrcoef(p[:, 0], y[:, 0])[0, 1] > 0.99
