"""The likelihood estimators against log p(y) by numerical quadrature over a 1- or 2-D latent."""

import math

import pytest
import torch

from latentfit.evaluation import iwae_log_prob, iwae_nll, prior_mc_curve, vae_elbo
from latentfit.likelihood import mc_marginal_log_prob, pairwise_bernoulli_log_prob, standard_normal_log_prob
from latentfit.models import VAE


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def small_model(z_dim: int, seed: int = 0) -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(seed)
    model = VAE(z_dim=z_dim, hidden=8, x_dim=12)
    with torch.no_grad():
        model.decoder.fc2.weight.mul_(4)  # a decoder that depends on z clearly, so the posterior is not the prior
    y = (torch.rand(6, 12, generator=torch.Generator().manual_seed(seed)) < 0.4).double()
    return model, y


def quadrature_log_prob(model: VAE, y: torch.Tensor, z_dim: int) -> torch.Tensor:
    """log p(y) = log integral N(z; 0, I) p(y | z) dz on a dense grid over [-8, 8]^d."""
    axis = torch.linspace(-8, 8, 4001 if z_dim == 1 else 401)
    grid = torch.cartesian_prod(*[axis] * z_dim).reshape(-1, z_dim)
    cell = math.log(axis[1] - axis[0]) * z_dim
    with torch.no_grad():
        log_joint = pairwise_bernoulli_log_prob(y, model.decoder(grid)) + standard_normal_log_prob(grid)
    return torch.logsumexp(log_joint, 1) + cell


@pytest.mark.parametrize("z_dim", [1, 2])
def test_iwae_and_prior_sampling_agree_with_quadrature(z_dim):
    model, y = small_model(z_dim)
    exact = quadrature_log_prob(model, y, z_dim)
    g = torch.Generator().manual_seed(1)
    torch.testing.assert_close(iwae_log_prob(model, y, 20000, g), exact, atol=0.02, rtol=0)
    draws = torch.randn(200000, z_dim, generator=g)
    with torch.no_grad():
        prior = mc_marginal_log_prob(y, model.decoder(draws))
    torch.testing.assert_close(prior, exact, atol=0.02, rtol=0)
    nll = prior_mc_curve(model.decoder, y, draws, [len(draws)], chunk=7777)[len(draws)]
    assert nll == pytest.approx(-prior.mean().item(), abs=1e-9)


def test_iwae_bound_is_above_the_elbo_and_rises_with_k():
    model, _ = small_model(2)
    y = (torch.rand(400, 12, generator=torch.Generator().manual_seed(5)) < 0.4).double()
    elbo_nll = vae_elbo(model, y, torch.Generator().manual_seed(2))["neg_elbo"]
    estimates = {k: iwae_nll(model, y, k, torch.Generator().manual_seed(3)) for k in (1, 10, 100, 1000)}
    nll = {k: mean for k, (mean, _) in estimates.items()}
    assert abs(nll[1] - elbo_nll) < 4 * estimates[1][1]  # k = 1 is an estimate of the ELBO itself
    assert elbo_nll > nll[10] > nll[100] > nll[1000]
    exact = -quadrature_log_prob(model, y, 2).mean().item()
    assert nll[1000] >= exact - 0.01 and nll[1000] - exact < 0.05


def test_prior_mc_curve_reports_each_prefix():
    model, y = small_model(2)
    draws = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    curve = prior_mc_curve(model.decoder, y, draws, [10, 100, 5000], chunk=64)
    assert sorted(curve) == [10, 100, 1000]  # sizes above the number of draws are capped
    for m, value in curve.items():
        with torch.no_grad():
            assert value == pytest.approx(-mc_marginal_log_prob(y, model.decoder(draws[:m])).mean().item(), abs=1e-9)
