import numpy as np
import pytest
import torch
from scipy import stats

from napari_hggep.model.losses import mse, size_factors, zinb_nll


def direct_zinb_nll(x, mu, r, pi):
    nb = stats.nbinom(n=r, p=r / (r + mu))
    return -np.where(x == 0, np.log(pi + (1 - pi) * nb.pmf(0)), np.log(1 - pi) + nb.logpmf(x))


def test_zinb_equals_direct_density():
    rng = np.random.default_rng(0)
    x = rng.poisson(3.0, size=200).astype(float)
    x[:20] = 0
    mu = rng.uniform(0.1, 20, 200)
    r = rng.uniform(0.2, 50, 200)
    pi = rng.uniform(0.01, 0.9, 200)
    ours = zinb_nll(torch.tensor(x), torch.tensor(mu), torch.tensor(r), torch.tensor(pi), reduction="none")
    np.testing.assert_allclose(ours.double().numpy(), direct_zinb_nll(x, mu, r, pi), atol=1e-4, rtol=1e-5)


def test_zinb_size_factor_scales_the_mean():
    x, mu, r, pi = torch.tensor([[4.0]]), torch.tensor([[2.0]]), torch.tensor([[3.0]]), torch.tensor([[0.1]])
    a = zinb_nll(x, mu, r, pi, size_factor=torch.tensor([[2.0]]))
    b = zinb_nll(x, mu * 2, r, pi)
    assert torch.allclose(a, b)


@pytest.mark.parametrize("x,mu,r", [(0.0, 1e-9, 1.0), (1e5, 3.0, 1e-6), (1e5, 1e5, 1e4), (0.0, 1e6, 1e-8), (7.0, 1e-12, 1e-12)])
def test_zinb_is_finite_at_extremes(x, mu, r):
    t = lambda v: torch.tensor([v], requires_grad=True)  # noqa: E731
    mu_t, r_t = t(mu), t(r)
    loss = zinb_nll(torch.tensor([x]), mu_t, r_t, torch.tensor([0.3]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(mu_t.grad).all() and torch.isfinite(r_t.grad).all()


def test_mse_and_size_factors():
    assert mse(torch.ones(3, 2), torch.zeros(3, 2)).item() == 1.0
    mask = torch.tensor([True, False, True])
    assert mse(torch.tensor([[1.0], [5.0], [1.0]]), torch.zeros(3, 1), mask).item() == 1.0
    sf = size_factors(torch.tensor([[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]]))
    assert torch.allclose(sf.flatten(), torch.tensor([0.5, 1.0, 2.0]))
