import numpy as np
import pytest
import torch

from napari_hggep.model.hypergraph import HAM, hyperedges


def brute_force(features, coords, k, largest=False):
    f = features.double().numpy()
    p = coords.double().numpy()
    n = len(f)
    edges = []
    for i in range(n):
        fd = np.array([np.linalg.norm(f[i] - f[j]) for j in range(n)])
        pd_ = np.array([np.linalg.norm(p[i] - p[j]) for j in range(n)])
        s = fd / fd.max() + pd_ / pd_.max()
        others = [j for j in range(n) if j != i]
        others.sort(key=lambda j: -s[j] if largest else s[j])
        edges.append([i] + others[:k])
    return edges


def as_sets(index, n):
    out = [set() for _ in range(n)]
    for node, edge in index.t().tolist():
        out[edge].add(node)
    return out


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("rule", ["nearest", "largest"])
def test_equals_brute_force(k, rule):
    g = torch.Generator().manual_seed(k)
    f = torch.randn(50, 16, generator=g)
    c = torch.rand(50, 2, generator=g) * 1000
    idx = hyperedges(f, c, k=k, rule=rule)
    assert idx.dtype == torch.long and idx.shape == (2, 50 * (k + 1))
    assert torch.equal(idx[1], torch.arange(50).repeat_interleave(k + 1))
    expected = brute_force(f, c, k, largest=rule == "largest")
    assert as_sets(idx, 50) == [set(e) for e in expected]


def test_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(7)
    f = torch.randn(333, 32, generator=g)
    c = torch.rand(333, 2, generator=g) * 5000
    full = hyperedges(f, c, k=3, chunk=10_000)
    for chunk in (1, 7, 64, 100):
        assert torch.equal(hyperedges(f, c, k=3, chunk=chunk), full)


def test_small_slides():
    assert hyperedges(torch.randn(1, 4), torch.zeros(1, 2), k=3).tolist() == [[0], [0]]
    idx = hyperedges(torch.randn(3, 4), torch.rand(3, 2), k=3)
    assert idx.shape == (2, 9)  # K capped at N - 1
    with pytest.raises(ValueError):
        hyperedges(torch.randn(3, 4), torch.rand(3, 2), rule="biggest")


def test_ham_shapes_and_residual():
    ham = HAM(64, k=3).eval()
    h = torch.randn(40, 64)
    out = ham(h, torch.rand(40, 2) * 100)
    assert out.shape == h.shape and torch.isfinite(out).all()
