"""The likelihood estimators against log p(y) by numerical quadrature over a 1- or 2-D latent."""

import math

import pytest
import torch

from latentfit.inference import ais
from latentfit.inference.ais import DecoderLikelihood, Schedule, ais_log_prob, bdmc, reverse_ais_log_prob, simulate
from latentfit.inference.estimators import iwae_log_prob, iwae_nll, prior_mc_curve, vae_elbo
from latentfit.model.likelihood import mc_marginal_log_prob, pairwise_bernoulli_log_prob, standard_normal_log_prob
from latentfit.model.networks import VAE


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


# 12 pixels make a weak likelihood: the posterior leaves the prior only near beta = 1e-3, so the path
# starts there rather than at the default 1e-5 that 784-pixel images need.
SMALL = Schedule(steps=500, leapfrog=5, beta_min=1e-3)


def test_ais_target_gradient_matches_autograd():
    model, y = small_model(2)
    z = torch.randn(len(y), 2, generator=torch.Generator().manual_seed(4), requires_grad=True)
    logl, grad = DecoderLikelihood(model.decoder, y)(z.detach())
    reference = pairwise_bernoulli_log_prob(y, model.decoder(z)).diagonal()
    (expected,) = torch.autograd.grad(reference.sum(), z)
    torch.testing.assert_close(logl, reference.detach())
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("z_dim", [1, 2])
def test_ais_agrees_with_quadrature(z_dim):
    model, y = small_model(z_dim)
    exact = quadrature_log_prob(model, y, z_dim)
    g = torch.Generator().manual_seed(1)
    estimate = ais_log_prob(model.decoder, y, chains=128, schedule=SMALL, generator=g)  # error ~ 1/sqrt(chains)
    torch.testing.assert_close(estimate, exact, atol=0.05, rtol=0)
    # short schedules are worse, and all err on the low side on average (a stochastic lower bound)
    short = torch.stack([ais_log_prob(model.decoder, y, chains=4, schedule=Schedule(steps=5, leapfrog=1),
                                      generator=g) for _ in range(20)])
    assert (short.mean(0) - exact).mean() < -0.01
    assert (short.mean(0) - exact).abs().mean() > (estimate - exact).abs().mean()


@pytest.mark.parametrize("z_dim", [1, 2])
def test_bdmc_brackets_the_exact_log_likelihood(z_dim):
    model, _ = small_model(z_dim)
    g = torch.Generator().manual_seed(2)
    y, z = simulate(model.decoder, 40, g)
    exact = quadrature_log_prob(model, y, z_dim).mean()
    gaps = {}
    for steps in (10, 300):
        schedule = Schedule(steps=steps, leapfrog=2, beta_min=SMALL.beta_min)
        kernels: list[torch.Tensor] = []
        forward = ais_log_prob(model.decoder, y, chains=4, schedule=schedule, generator=g, kernels=kernels).mean()
        reverse = reverse_ais_log_prob(model.decoder, y, z, chains=4, schedule=schedule, kernels=kernels,
                                       generator=g).mean()
        gaps[steps] = (reverse - forward).item()
        if steps == 10:  # a short path: the bias shows through the noise, on both sides
            assert forward < exact < reverse
        else:
            assert forward - 0.03 < exact < reverse + 0.03
    assert abs(gaps[300]) < 0.1 < gaps[10]
    same = torch.Generator().set_state(g.get_state())  # bdmc's own draws: its images, then its chains
    result = bdmc(model.decoder, 40, chains=4, schedule=Schedule(steps=10, leapfrog=2, beta_min=SMALL.beta_min),
                  generator=g)
    y, _ = simulate(model.decoder, 40, same)
    exact = -quadrature_log_prob(model, y, z_dim).mean().item()
    # the two bounds on either side of the exact NLL, up to the noise of 40 images (as at 300 distributions above)
    assert result["lower_nll"] - 0.03 < exact < result["upper_nll"] + 0.03 and result["gap"] > 0
    assert result["gap_se"] > 0


def test_the_reverse_chain_replays_the_forward_step_sizes_whatever_its_start(monkeypatch):
    """BDMC's reverse weights are unbiased only with kernels fixed before the reverse chain starts: it runs
    the forward run's per-image step sizes, last first, at the same inverse temperatures, with no pilot
    chains, and the exact sample it starts from changes none of them."""
    model, _ = small_model(2)
    g = torch.Generator().manual_seed(3)
    y, z = simulate(model.decoder, 6, g)
    schedule = Schedule(steps=12, leapfrog=2, beta_min=SMALL.beta_min)
    calls: list[tuple[float, torch.Tensor, int]] = []
    hmc = ais._hmc

    def recording(target, z_, logl, grad, beta, step, leapfrog, generator):
        calls.append((beta, step[:, 0].clone(), len(z_)))
        return hmc(target, z_, logl, grad, beta, step, leapfrog, generator)

    monkeypatch.setattr(ais, "_hmc", recording)
    kernels: list[torch.Tensor] = []
    ais_log_prob(model.decoder, y, chains=4, schedule=schedule, generator=g, kernels=kernels)
    forward, calls[:] = list(calls), []
    assert len(kernels) == len(forward) == schedule.steps - 1
    assert len({tuple(k.tolist()) for k in kernels}) > 1  # adapted along the path, per image
    for start in (z, z + 1.0):
        reverse_ais_log_prob(model.decoder, y, start, chains=4, schedule=schedule, kernels=kernels, generator=g)
        assert [beta for beta, _, _ in calls] == [beta for beta, _, _ in reversed(forward)]
        for (_, step, rows), (_, used, _) in zip(calls, reversed(forward), strict=True):
            assert rows == 4 * len(y)  # the counted chains alone
            torch.testing.assert_close(step, used[: len(step)], rtol=0, atol=0)
        calls[:] = []
    with pytest.raises(ValueError, match="step sizes"):
        reverse_ais_log_prob(model.decoder, y, z, chains=4, schedule=schedule, kernels=kernels[1:], generator=g)


def bimodal_model() -> tuple[VAE, torch.Tensor, float]:
    """A 1-d decoder that sees only |z|: the posterior of an image is two mirror-image modes.

    The encoder is the best a Gaussian can do by the ELBO (it is mode-seeking): one mode, its width.
    Returns the model, one image and the positive mode's location."""
    model = VAE(z_dim=1, hidden=2, x_dim=12)
    with torch.no_grad():
        model.decoder.fc1.weight.copy_(torch.tensor([[1.0], [-1.0]]))  # hidden = (relu(z), relu(-z))
        model.decoder.fc1.bias.zero_()
        w = torch.linspace(-3, 3, 12)[:, None]
        model.decoder.fc2.weight.copy_(w.repeat(1, 2))  # logits = w * |z| + b
        model.decoder.fc2.bias.copy_(-3 * w[:, 0])  # pixel j is most likely on when |z| = 3
    y = (torch.sigmoid(model.decoder(torch.tensor([[3.0]]))) > 0.5).double()
    axis = torch.linspace(0.01, 8, 8000)[:, None]
    with torch.no_grad():
        log_post = pairwise_bernoulli_log_prob(y, model.decoder(axis))[0] + standard_normal_log_prob(axis)
    mode = float(axis[log_post.argmax(), 0])
    curvature = float(-(log_post[log_post.argmax() + 1] - 2 * log_post.max() + log_post[log_post.argmax() - 1])
                      / (axis[1, 0] - axis[0, 0]) ** 2)
    with torch.no_grad():
        model.encoder.fc.weight.zero_()
        model.encoder.head.weight.zero_()
        model.encoder.head.bias.copy_(torch.tensor([mode, -math.log(curvature)]))
    return model, y, mode


def test_ais_stays_tight_where_a_gaussian_encoder_fits_badly():
    model, y, mode = bimodal_model()
    exact = quadrature_log_prob(model, y, 1)
    assert mode > 1.5, "two well-separated modes at +-mode"
    g = torch.Generator().manual_seed(3)
    iwae = iwae_log_prob(model, y, 5000, g)
    assert exact - iwae > 0.5, "IWAE with the one-mode encoder misses the other mode's mass (log 2)"
    ais = ais_log_prob(model.decoder, y, chains=128, schedule=SMALL, generator=g)
    torch.testing.assert_close(ais, exact, atol=0.05, rtol=0)


def test_the_training_iwae_bound_rises_with_k_towards_the_quadrature_log_likelihood():
    """train_vae.iwae_k: likelihood.iwae_bound, averaged over many independent sets of k draws, is a lower
    bound on log p(y) (quadrature, 1-d latent) that rises with k and closes on it; k = 1 is the ELBO."""
    from latentfit.model.likelihood import elbo_terms, iwae_bound

    model, y = small_model(1)
    exact = quadrature_log_prob(model, y, 1)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        mu, logvar = model.encoder(y)
        means, errors = {}, {}
        for k in (1, 4, 64):
            eps = torch.randn(k, 2000, *mu.shape, generator=g)
            z = mu + torch.exp(0.5 * logvar) * eps  # 2000 replicates of k draws per image
            bounds = iwae_bound(y, model.decoder(z), z, mu, logvar)
            means[k], errors[k] = bounds.mean(0), bounds.std(0) / math.sqrt(len(bounds))
            assert (means[k] <= exact + 4 * errors[k]).all(), k  # a lower bound, within its error
        noise = torch.randn(20000, *mu.shape, generator=g)
        elbo = -sum(elbo_terms(y.expand(20000, -1, -1), *model(y.expand(20000, -1, -1), noise)))
    error = torch.sqrt(errors[1] ** 2 + (elbo.std(0) / math.sqrt(len(elbo))) ** 2)
    assert ((means[1] - elbo.mean(0)).abs() < 4 * error).all(), "k = 1 is the ELBO"
    assert (means[1] < means[4]).all() and (means[4] < means[64]).all()
    assert ((exact - means[64]) < 0.25 * (exact - means[1])).all(), "k = 64 closes most of the ELBO's gap"


@pytest.mark.parametrize("steps", [1, 2, 7])
def test_the_ais_cost_axis_counts_the_decoder_passes_it_makes(monkeypatch, steps):
    model, _ = small_model(2)
    passes = []
    call, gradient = ais.DecoderLikelihood.__call__, ais.DecoderLikelihood.gradient
    monkeypatch.setattr(ais.DecoderLikelihood, "__call__", lambda self, z: passes.append(len(z)) or call(self, z))
    monkeypatch.setattr(ais.DecoderLikelihood, "gradient", lambda self, z: passes.append(len(z)) or gradient(self, z))
    schedule = Schedule(steps=steps, leapfrog=3)
    y, _ = simulate(model.decoder, 2, torch.Generator().manual_seed(0))
    ais_log_prob(model.decoder, y, chains=4, schedule=schedule, generator=torch.Generator())
    assert sum(passes) / 2 == schedule.likelihood_evaluations(4)  # per image, pilot chains included
