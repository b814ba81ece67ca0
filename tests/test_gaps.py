"""The anatomy's math on cases with known answers: 1- and 2-d latents, where quadrature gives the ELBO of
any Gaussian, the likelihood and the exact posterior's rate and distortion; weights whose effective
sample size is known; a decoder whose mixture uses a known number of components."""

import math

import numpy as np
import pytest
import torch
from scipy import optimize

from latentfit.inference.ais import Schedule, ais_path
from latentfit.inference.diagnostics import (
    GaussianFit,
    active_units,
    component_use,
    gaussian_elbo,
    optimise_gaussian,
    pareto_k,
    rate_distortion,
    responsibilities,
)
from latentfit.inference.estimators import effective_sample_size, prior_mc_sampled
from latentfit.model.likelihood import pairwise_bernoulli_log_prob
from latentfit.model.networks import Decoder


def small_decoder(z_dim: int, seed: int, pixels: int = 12) -> Decoder:
    torch.manual_seed(seed)
    decoder = Decoder(z_dim, 16, pixels).double()
    with torch.no_grad():
        decoder.fc1.weight.mul_(3.0)
        decoder.fc2.weight.mul_(2.0)
    return decoder.eval()


def image_of(decoder: Decoder, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, decoder.z_dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        return torch.bernoulli(torch.sigmoid(decoder(z)), generator=g)


class Quadrature:
    """Gauss-Hermite nodes for E over N(0, I_d), d = 1 or 2, and a dense grid for the posterior."""

    def __init__(self, d: int, nodes: int = 60):
        x, w = np.polynomial.hermite_e.hermegauss(nodes)  # weight exp(-x^2 / 2)
        w = w / w.sum()
        grids = np.meshgrid(*[x] * d, indexing="ij")
        self.eps = torch.tensor(np.stack([g.ravel() for g in grids], 1))
        self.w = torch.tensor(np.prod(np.meshgrid(*[w] * d, indexing="ij"), 0).ravel())

    def expect(self, f, mu: torch.Tensor, tril: torch.Tensor) -> torch.Tensor:
        z = mu + self.eps @ tril.T
        return (self.w * f(z)).sum()


def log_lik(decoder: Decoder, y: torch.Tensor):
    def f(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return pairwise_bernoulli_log_prob(y, decoder(z))[0]
    return f


def elbo_by_quadrature(decoder, y, mu, tril, quad) -> float:
    q = GaussianFit(mu[None], tril[None])
    return (quad.expect(log_lik(decoder, y), mu, tril) - q.kl()[0]).item()


def posterior_grid(decoder: Decoder, y: torch.Tensor, d: int, span: float = 7.0, n: int = 401):
    """log p(y | z), log N(z) and the cell volume on a dense grid: exact posterior sums."""
    axis = torch.linspace(-span, span, n, dtype=torch.float64)
    z = torch.stack([g.ravel() for g in torch.meshgrid(*[axis] * d, indexing="ij")], 1)
    logl = log_lik(decoder, y)(z)
    log_prior = -0.5 * z.pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi)
    return logl, log_prior, (axis[1] - axis[0]).item() ** d


def tempered(logl, log_prior, cell, beta: float) -> tuple[float, float]:
    """log Z_beta and the distortion E[-log p(y|z)] under pi_beta ∝ p(z) p(y|z)^beta, by the grid."""
    log_unnorm = log_prior + beta * logl + math.log(cell)
    log_z = torch.logsumexp(log_unnorm, 0)
    return log_z.item(), -(torch.softmax(log_unnorm, 0) * logl).sum().item()


def best_gaussian(decoder, y, d: int, full: bool, quad) -> float:
    """The best ELBO by brute force: scipy's optimiser over the Gaussian's parameters, ELBO by quadrature,
    from a grid of starting points."""
    def unpack(theta):
        mu = torch.tensor(theta[:d])
        tril = torch.diag(torch.exp(torch.tensor(theta[d:2 * d])))
        if full and d == 2:
            tril = tril + torch.tensor([[0.0, 0.0], [theta[2 * d], 0.0]], dtype=torch.float64)
        return mu, tril

    def loss(theta):
        return -elbo_by_quadrature(decoder, y, *unpack(theta), quad)

    size = 2 * d + (1 if full and d == 2 else 0)
    starts = [np.r_[np.full(d, m), np.full(d, s), np.zeros(size - 2 * d)] for m in (-1.5, 0.0, 1.5) for s in (-2.0, -0.5)]
    return max(-optimize.minimize(loss, x0, method="Nelder-Mead",
                                  options={"xatol": 1e-7, "fatol": 1e-9, "maxiter": 20000}).fun for x0 in starts)


@pytest.mark.parametrize(("d", "full"), [(1, False), (2, False), (2, True)])
def test_the_optimised_gaussian_reaches_the_brute_force_optimum(d, full):
    decoder, quad = small_decoder(d, seed=d), Quadrature(d)
    for image in range(2):
        y = image_of(decoder, seed=10 + image)
        start = GaussianFit(torch.zeros(1, d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)[None])
        fit = optimise_gaussian(decoder, y, start, full=full, steps=1500, samples=32, lr=0.05,
                                generator=torch.Generator().manual_seed(image))
        ours = elbo_by_quadrature(decoder, y, fit.mu[0], fit.scale_tril[0], quad)
        brute = best_gaussian(decoder, y, d, full, quad)
        logl, log_prior, cell = posterior_grid(decoder, y, d)
        log_p = tempered(logl, log_prior, cell, 1.0)[0]
        assert ours <= log_p + 1e-6 and brute <= log_p + 1e-6  # an ELBO never exceeds log p(y)
        assert ours == pytest.approx(brute, abs=0.02)  # nats
        # and the Monte Carlo score of the same q agrees with its quadrature
        eps = torch.randn(20000, 1, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        assert gaussian_elbo(decoder, y, fit, eps)["elbo"].item() == pytest.approx(ours, abs=0.05)


@pytest.mark.parametrize("full", [False, True])
def test_the_written_out_gradient_takes_autograds_steps_image_by_image(full):
    """optimise_gaussian's Adam steps, on several images with several draws each, are those of autograd
    through the decoder on the loss it describes: sum over images of E_q[-log p(y | z)] + KL(q || p)."""
    from latentfit.model.likelihood import bernoulli_log_prob

    decoder, d, samples = small_decoder(3, seed=2, pixels=30), 3, 4
    y = torch.cat([image_of(decoder, seed=s) for s in range(5)])
    g = torch.Generator().manual_seed(0)
    start = GaussianFit(torch.randn(5, d, generator=g, dtype=torch.float64),
                        torch.diag_embed(torch.rand(5, d, generator=g, dtype=torch.float64) + 0.3))
    ours = optimise_gaussian(decoder, y, start, full=full, steps=25, samples=samples, lr=0.05,
                             generator=torch.Generator().manual_seed(1))
    mu, log_diag = start.mu.clone().requires_grad_(), start.scale_tril.diagonal(dim1=1, dim2=2).log().requires_grad_()
    lower = torch.zeros(5, d, d, dtype=torch.float64, requires_grad=full)
    optimizer = torch.optim.Adam([mu, log_diag, *([lower] if full else [])], lr=0.05)
    schedule, g = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 25), torch.Generator().manual_seed(1)
    for _ in range(25):
        q = GaussianFit(mu, torch.diag_embed(log_diag.exp()) + (torch.tril(lower, -1) if full else 0))
        eps = torch.randn(samples, 5, d, generator=g, dtype=torch.float64)
        loss = (-bernoulli_log_prob(y, decoder(q.sample(eps))).mean(0) + q.kl()).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    tril = torch.diag_embed(log_diag.exp()) + (torch.tril(lower, -1) if full else 0)
    torch.testing.assert_close(ours.mu, mu.detach())
    torch.testing.assert_close(ours.scale_tril, tril.detach())
    assert not torch.equal(ours.mu, start.mu)  # it moved
    assert all(p.requires_grad for p in decoder.parameters())  # and left the decoder as it found it


def test_a_full_covariance_gaussian_beats_a_diagonal_one_on_a_correlated_posterior():
    decoder, quad = small_decoder(2, seed=7), Quadrature(2)
    y = image_of(decoder, seed=3)
    diag, full = (best_gaussian(decoder, y, 2, f, quad) for f in (False, True))
    assert full >= diag - 1e-6


def test_rate_plus_distortion_is_the_likelihood_and_the_path_matches_quadrature():
    decoder = small_decoder(2, seed=5, pixels=20)
    y = torch.cat([image_of(decoder, seed=s) for s in range(3)])
    path = ais_path(decoder.float(), y.float(), chains=1000, schedule=Schedule(steps=200, leapfrog=5, beta_min=1e-3),
                    generator=torch.Generator().manual_seed(0))
    rd = rate_distortion(path.betas, path.log_z, path.distortion)
    # thermodynamic integration: d log Z_beta / d beta = -distortion(beta), so the distortions along the path,
    # integrated, give the AIS estimate of log p(y) they were not computed from
    integral = -torch.trapezoid(rd.distortion.double(), path.betas.double(), dim=0)
    torch.testing.assert_close(integral, path.log_prob.double(), atol=0.1, rtol=0.01)
    decoder = decoder.double()
    for b in range(len(y)):
        logl, log_prior, cell = posterior_grid(decoder, y[b:b + 1], 2)
        for t in (len(path.betas) // 2, len(path.betas) - 1):  # half-way (beta ~ 0.03) and the exact posterior
            beta = path.betas[t].item()
            log_z, distortion = tempered(logl, log_prior, cell, beta)
            assert path.log_z[t, b].item() == pytest.approx(log_z, abs=0.05)
            assert rd.distortion[t, b].item() == pytest.approx(distortion, abs=0.1 + 0.02 * abs(distortion))
            assert rd.rate[t, b].item() == pytest.approx(-beta * distortion - log_z, abs=0.1 + 0.02 * abs(distortion))
        assert rd.rate[0, b].item() == pytest.approx(0.0, abs=1e-9)  # beta = 0 is the prior: rate 0


def test_effective_sample_size_on_weights_with_known_answers():
    log_w = torch.full((3, 10), -math.inf)
    log_w[0, :4] = 2.5  # four equal weights, six zero: ESS 4
    log_w[1] = -1.0  # all equal: ESS 10
    log_w[2, :2] = torch.tensor([0.0, math.log(3.0)])  # weights 1 and 3: (1 + 3)^2 / (1 + 9) = 1.6
    assert effective_sample_size(log_w).tolist() == pytest.approx([4.0, 10.0, 1.6])


def test_prior_samplings_running_ess_and_kept_weights_match_the_full_weight_matrix():
    decoder = small_decoder(2, seed=1, pixels=30).float()
    x = torch.bernoulli(torch.full((7, 30), 0.4), generator=torch.Generator().manual_seed(0))
    draws = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    run = prior_mc_sampled(decoder, x, draws, [100, 500], batch_size=3, chunk=64, keep=5)
    with torch.no_grad():
        full = pairwise_bernoulli_log_prob(x, decoder(draws))
    assert run.log_w is not None and torch.allclose(run.log_w, full[:5])
    assert torch.allclose(run.ess, effective_sample_size(full), rtol=1e-4)
    assert torch.allclose(run.log_p[500], torch.logsumexp(full, 1) - math.log(500), atol=1e-4)


def test_pareto_k_separates_light_from_heavy_tailed_weights():
    rng = np.random.default_rng(0)
    light = torch.tensor(rng.normal(0, 0.3, (4, 2000)))  # log-normal weights with a small spread
    heavy = torch.tensor(np.log(rng.pareto(0.8, (4, 2000)) + 1))  # tail index 0.8: k = 1 / 0.8 = 1.25
    assert (pareto_k(light) < 0.5).all() and (pareto_k(heavy) > 0.7).all()
    assert np.abs(pareto_k(heavy) - 1.25).max() < 0.35
    spread = torch.tensor(np.r_[0.0, np.linspace(-2000, -1000, 1999)])[None]  # one weight carries everything
    assert pareto_k(spread)[0] == np.inf


def test_the_component_count_of_a_decoder_with_a_known_number_of_distinct_outputs():
    """Three draws decode to three sharp patterns the images are made of; five decode to a blank that no
    image resembles: three components carry the data, equally, one per image."""
    pixels, patterns = 30, torch.tensor([[1.0] * 10 + [0.0] * 20, [0.0] * 10 + [1.0] * 10 + [0.0] * 10,
                                         [0.0] * 20 + [1.0] * 10])
    decoder = Decoder(3, 3, pixels)
    with torch.no_grad():
        decoder.fc1.weight.copy_(torch.eye(3))
        decoder.fc1.bias.zero_()
        decoder.fc2.weight.copy_(4.0 * patterns.T)  # z = 10 e_k: logits +20 on pattern k, -20 elsewhere
        decoder.fc2.bias.fill_(-20.0)
    draws = torch.cat([10 * torch.eye(3), torch.full((5, 3), -10.0)])  # the last five: ReLU 0, all pixels off
    images = patterns.repeat(4, 1)  # each pattern four times
    use = component_use(responsibilities(decoder, images, draws))
    assert use["components"] == 8 and use["used"] == 3
    assert use["perplexity"] == pytest.approx(3.0, abs=1e-6) and use["per_image"] == pytest.approx(1.0, abs=1e-6)


def test_active_units_counts_the_dimensions_the_encoder_moves():
    mu = torch.randn(500, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 0.5, 0.05, 0.0])
    assert active_units(mu) == 2
