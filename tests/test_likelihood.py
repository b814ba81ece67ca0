"""The loss math against the notebook's straightforward formulas."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentfit.evaluation.reference import entropy_floor
from latentfit.inference.estimators import prior_mc_nll
from latentfit.inference.reconstruct import prior_search
from latentfit.model.likelihood import (
    bernoulli_log_prob,
    elbo_terms,
    gaussian_kl,
    mc_marginal_log_prob,
    pairwise_bernoulli_log_prob,
)
from latentfit.model.networks import VAE, Decoder


@pytest.fixture(autouse=True)
def float64():
    """Compare formulas in double precision; restore the default for the other test modules."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(5, 784, generator=g)
    y[:2] = (y[:2] > 0.5).double()  # binary and grayscale rows alike
    return y, 3 * torch.randn(7, 784, generator=g), g


def notebook_loss(x, x_rec, mu, logvar):
    """vae_loss_bernoulli from the notebook, per image."""
    bce = F.binary_cross_entropy(x_rec, x, reduction="none").sum(dim=1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)
    return bce, kl


def notebook_pairwise(x, logits):
    """The notebook's B x M x D formulation of log p(x_b | z_m)."""
    return -F.binary_cross_entropy_with_logits(
        logits[None].expand(x.shape[0], -1, -1), x[:, None].expand(-1, logits.shape[0], -1), reduction="none"
    ).sum(2)


def test_elbo_terms_match_notebook_loss(data):
    y, _, g = data
    vae = VAE().double()
    noise = torch.randn(len(y), 20, generator=g)
    logits, mu, logvar = vae(y, noise)
    rec, kl = elbo_terms(y, logits, mu, logvar)
    ref_rec, ref_kl = notebook_loss(y, torch.sigmoid(logits), mu, logvar)
    torch.testing.assert_close(rec, ref_rec)
    torch.testing.assert_close(kl, ref_kl)


def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p).sum(-1))


def test_pairwise_is_the_bxmxd_formula_without_the_tensor(data):
    y, logits, _ = data
    torch.testing.assert_close(pairwise_bernoulli_log_prob(y, logits), notebook_pairwise(y, logits))
    torch.testing.assert_close(bernoulli_log_prob(y, logits[:5]), notebook_pairwise(y, logits).diagonal()[:5])


def test_mc_marginal_matches_log_mean_exp(data):
    y, logits, _ = data
    expected = torch.log(torch.exp(notebook_pairwise(y, logits / 50)).mean(1))  # small logits: no underflow
    torch.testing.assert_close(mc_marginal_log_prob(y, logits / 50), expected)
    # and stays finite where exp() would underflow to zero
    assert torch.isfinite(mc_marginal_log_prob(y, logits)).all()


def test_prior_mc_nll_is_chunk_invariant(data):
    y, _, g = data
    decoder = Decoder().double()
    draws = torch.randn(300, 20, generator=g)
    whole = -mc_marginal_log_prob(y, decoder(draws)).mean().item()
    assert prior_mc_nll(decoder, y, draws, batch_size=2, chunk=64) == pytest.approx(whole, rel=1e-12)


def test_prior_search_finds_the_brute_force_argmax(data):
    y, _, g = data
    decoder = Decoder().double()
    draws = torch.randn(1000, 20, generator=g)
    brute = draws[notebook_pairwise(y, decoder(draws)).argmax(1)]
    torch.testing.assert_close(prior_search(decoder, y, draws, chunk=37), brute)


def test_entropy_floor_matches_direct_computation(data):
    y, _, _ = data
    p = y.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log(p), 0) + np.where(p < 1, (1 - p) * np.log(1 - p), 0))
    assert entropy_floor(y) == pytest.approx(h.sum(1).mean(), rel=1e-9)
    assert entropy_floor(y[:2]) == 0.0  # binary images: a perfect model reaches zero
    assert math.isfinite(entropy_floor(y))
