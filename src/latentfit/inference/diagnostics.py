"""The anatomy of a likelihood gap: the math behind "why one decoder wins", on any decoder of this model.

- **Inference gaps** (Cremer, Li & Duvenaud 2018). For one image, log p(y) - ELBO(q) = KL(q || p(z | y)).
  The encoder's q gives the amortised ELBO; a Gaussian optimised for that image alone gives the best
  ELBO the family reaches. Hence log p(y) - amortised ELBO = approximation gap (log p(y) - best Gaussian
  ELBO: the family cannot fit the posterior) + amortisation gap (best - amortised: the encoder misses).
  Every ELBO here uses one estimator: the analytic KL(q || N(0, I)) plus the mean of -log p(y | z) over
  the same standard-normal draws pushed through each q (common random numbers, so gaps between the
  Gaussians of one image are nearly noise-free).
- **Rate and distortion of the exact posterior** (Huang et al. 2020), read off an AIS path: the
  tempered posterior pi_beta ∝ p(z) p(y | z)^beta has distortion D = E[-log p(y | z)], rate
  R = KL(pi_beta || p(z)) = -beta D - log Z_beta, so at beta = 1, R + D = -log p(y) exactly.
- **Importance-sampling diagnostics**: the effective sample size (sum w)^2 / sum w^2 and the Pareto k
  of the largest weights (Vehtari et al., PSIS, from arviz-stats): k > 0.7 says the estimate cannot
  be trusted whatever its apparent spread.
- **A mixture's use of its components**: with its M training draws fixed, the direct fit's objective
  is the log-likelihood of an M-component Bernoulli mixture; the responsibilities say how many
  components carry the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from latentfit.core.stats import host
from latentfit.inference.ais import DecoderLikelihood
from latentfit.model.likelihood import bernoulli_log_prob, pairwise_bernoulli_log_prob
from latentfit.model.networks import Decoder

PARETO_K_LIMIT = 0.7  # Vehtari et al. 2024: above it, importance sampling's estimate is unreliable
UNDERFLOW = math.log(np.finfo(np.float64).tiny)  # about -708: exp of a log weight this far below the top is 0


@dataclass
class GaussianFit:
    """q(z | y) = N(mu, L L^T) per image: mu (B, d), scale_tril (B, d, d), lower triangular."""

    mu: torch.Tensor
    scale_tril: torch.Tensor

    @classmethod
    def diagonal(cls, mu: torch.Tensor, logvar: torch.Tensor) -> GaussianFit:
        return cls(mu, torch.diag_embed(torch.exp(0.5 * logvar)))

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per image, analytic."""
        diag = self.scale_tril.diagonal(dim1=-2, dim2=-1)
        trace = self.scale_tril.pow(2).sum((-2, -1))
        return 0.5 * (trace + self.mu.pow(2).sum(-1) - self.mu.shape[-1]) - diag.log().sum(-1)

    def sample(self, eps: torch.Tensor) -> torch.Tensor:
        """z = mu + L eps for standard-normal eps (S, B, d) -> (S, B, d)."""
        return self.mu + torch.einsum("bij,sbj->sbi", self.scale_tril, eps)


@torch.no_grad()
def gaussian_elbo(decoder: Decoder, y: torch.Tensor, q: GaussianFit, eps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: the ELBO of q, its reconstruction term rec = E_q[-log p(y | z)] over the draws `eps`
    (S, B, d), and its KL; elbo = -(rec + kl)."""
    logits = decoder(q.sample(eps))
    rec = -bernoulli_log_prob(y, logits).mean(0)
    kl = q.kl()
    return {"elbo": -(rec + kl), "rec": rec, "kl": kl}


def optimise_gaussian(decoder: Decoder, y: torch.Tensor, start: GaussianFit, *, full: bool, steps: int,
                      samples: int, lr: float, generator: torch.Generator) -> GaussianFit:
    """The Gaussian that maximises each image's ELBO, by Adam on reparameterised draws (`samples` per
    image per step, step size `lr` annealed to 0 on a cosine), from `start` (the encoder's q).
    Diagonal covariance, or full when `full`. The reconstruction term's gradient in each draw z is
    written out (DecoderLikelihood, as AIS uses it) and only z = mu + L eps and the KL go through autograd:
    the steps need no log-likelihood value (no softplus pass) and no graph through the decoder. A test
    checks its steps against autograd's."""
    decoder.eval()
    d = start.mu.shape[-1]
    mu = start.mu.detach().clone().requires_grad_()
    log_diag = start.scale_tril.diagonal(dim1=-2, dim2=-1).log().detach().clone().requires_grad_()
    lower = torch.tril(start.scale_tril.detach(), -1).clone().requires_grad_(full)
    mask = torch.ones(d, d, device=mu.device, dtype=mu.dtype).tril(-1)

    def current() -> GaussianFit:
        tril = torch.diag_embed(log_diag.exp())
        return GaussianFit(mu, tril + lower * mask if full else tril)

    target = DecoderLikelihood(decoder, y.repeat(samples, 1))  # row s * B + b: draw s of image b
    optimizer = torch.optim.Adam([mu, log_diag, *([lower] if full else [])], lr=lr)
    # the step size anneals to 0, so the last iterate settles at the optimum instead of jittering around it
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    for _ in range(steps):
        q = current()
        eps = torch.randn(samples, *mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = q.sample(eps)
        with torch.no_grad():  # d rec / dz for rec = -mean_s log p(y | z_s), each image's own
            d_rec = target.gradient(z.detach().reshape(-1, d)).view_as(z).div_(-samples)
        optimizer.zero_grad(set_to_none=True)
        # the loss is the sum over images of rec + KL (images are independent: its gradient is each image's own)
        torch.autograd.backward([z, q.kl().sum()], [d_rec, None])
        optimizer.step()
        schedule.step()
    q = current()
    return GaussianFit(q.mu.detach(), q.scale_tril.detach())


def pareto_k(log_w: torch.Tensor) -> np.ndarray:
    """Pareto smoothed importance sampling's k-hat of each row's weights (arviz-stats' implementation).

    arviz-stats' `psislw` takes log-likelihood values, whose negatives are its log weights (as in LOO), so
    it is given -log_w. Where the tail it fits (the largest 3 sqrt(n) weights) spans more than float64's
    range below the largest weight, the fit would see zeros: such weights are dominated by a few so
    completely that k is taken as infinite."""
    from arviz_stats.base import array_stats

    lw = host(log_w)
    tail = int(math.ceil(min(0.2 * lw.shape[-1], 3 * math.sqrt(lw.shape[-1]))))
    ordered = np.sort(lw, axis=-1)
    degenerate = ordered[..., -tail - 1] - ordered[..., -1] < UNDERFLOW
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        _, k = array_stats.psislw(-lw, axis=-1)
    return np.where(degenerate, np.inf, np.asarray(k, dtype=float))


@torch.no_grad()
def responsibilities(decoder: Decoder, x: torch.Tensor, draws: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """p(component m | y_b) of the mixture (1/M) sum_m p(y | z_m) the direct fit trains on: (B, M)."""
    decoder.eval()
    logits = decoder(draws)
    return torch.cat([torch.softmax(pairwise_bernoulli_log_prob(y, logits), 1) for y in x.split(batch_size)])


def component_use(resp: torch.Tensor) -> dict[str, Any]:
    """How many of the M components carry the images: `used` (those that carry at least one image's worth
    of responsibility), `perplexity` (exp of the entropy of the pooled responsibility: the effective
    number of components), `per_image` (mean of 1 / sum_m r_bm^2: components that share one image)."""
    r = host(resp)
    pooled = r.sum(0)
    share = pooled / pooled.sum()
    entropy = -(share * np.log(np.maximum(share, 1e-300))).sum()
    return {"components": r.shape[1], "used": int((pooled >= 1.0).sum()), "perplexity": float(np.exp(entropy)),
            "per_image": float((1.0 / (r**2).sum(1)).mean())}


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over images of KL(q(z_u | y) || N(0, 1)) for each latent dimension u: (d,)."""
    return (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).mean(0)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Burda et al. 2015: unit u is active when Cov_y(E_q[z_u | y]) > threshold."""
    return int((host(mu).var(0, ddof=1) > threshold).sum())


@dataclass
class RateDistortion:
    """Per image along an AIS path: beta (T,), rate and distortion (T, B) in nats."""

    beta: torch.Tensor
    rate: torch.Tensor
    distortion: torch.Tensor


def rate_distortion(betas: torch.Tensor, log_z: torch.Tensor, distortion: torch.Tensor) -> RateDistortion:
    """From each tempered distribution's log normaliser log Z_beta (T, B) and distortion (T, B):
    rate = KL(pi_beta || p(z)) = -beta D - log Z_beta."""
    rate = -betas[:, None] * distortion - log_z
    return RateDistortion(betas, rate, distortion)
