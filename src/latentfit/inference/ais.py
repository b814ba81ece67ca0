"""Annealed importance sampling (AIS) of log p(y) for any decoder of this model, and its check by
bidirectional Monte Carlo (BDMC).

The path runs from the prior to the posterior through the tempered distributions

    pi_beta(z)  ∝  N(z; 0, I) p(y | z)^beta,      0 = beta_0 < beta_1 < ... < beta_T = 1,

with Hamiltonian Monte Carlo transitions that leave each pi_beta invariant. A chain's log weight is
sum_t (beta_t - beta_{t-1}) log p(y | z_{t-1}); the mean of the weights over independent chains is an
unbiased estimate of p(y), so the log of that mean is a stochastic lower bound on log p(y) (an upper
bound on the NLL) that tightens as the schedule lengthens. Starting from the prior needs no encoder:
both decoders are measured the same way, however badly a Gaussian encoder fits their posteriors.

Choices, and why:
- **Geometric schedule** (betas equally spaced in log beta from `beta_min` to 1). Once the likelihood
  dominates, pi_beta is close to a Gaussian whose precision grows like beta, so the variance of
  log p(y | z) under it falls like d / (2 beta^2): the variance of each weight increment,
  (delta beta)^2 Var[log p(y | z)], is then the same at every step when delta beta is proportional
  to beta. Equal increments are what minimises the variance of the summed log weight for a given
  number of steps (the "thermodynamic length" argument), and that variance is what biases the log.
- **HMC with a per-image step size** that is adapted on the go towards an acceptance probability of
  0.65 (Neal's optimum for HMC): the posterior narrows by orders of magnitude along the path, and
  differently for every image. The step size of an image is steered by a few extra pilot chains
  whose weights are never counted, so the counted chains see a sequence of kernels that does not
  depend on their own states, and every AIS weight stays unbiased. (Wu et al. 2017's code,
  tonywu95/eval_gen, adapts one global step size from the mean acceptance of all chains: one size
  for images whose posteriors differ. The PyTorch code behind Cremer et al. 2018 adapts each chain on
  its own acceptance, which is simpler but biases log p(y) upwards: the 2-d quadrature test sees it.)
- **BDMC** (Grosse et al. 2015): on data simulated from the decoder, the latent that generated an
  image is an exact posterior sample, so AIS can also be run backwards from it; the reverse chain
  gives a stochastic upper bound on log p(y). The distance between the two bounds bounds the error
  of either at that schedule. The reverse chain replays the forward run's step sizes, fixed before it
  starts: steered by pilots that start from the exact sample, its kernels would depend on its own start.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latentfit.core.stats import CompensatedSum, host, standard_error
from latentfit.model.networks import Decoder

TARGET_ACCEPT = 0.65
TICK = 25  # distributions between calls of an annealing run's `tick`
ADAPT_RATE = 0.5  # log step size moves by rate * (acceptance probability - target) per transition


@dataclass(frozen=True)
class Schedule:
    """The annealing path: `steps` intermediate distributions, HMC with `leapfrog` steps at each."""

    steps: int = 500
    leapfrog: int = 5
    beta_min: float = 1e-5
    pilots: int = 2  # extra chains per image whose acceptance steers the step size; their weights are unused

    def beta_values(self) -> list[float]:
        """beta_0 = 0, then `steps` values geometric from beta_min to 1 (beta_T = 1 exactly), as Python
        floats: the annealing loop reads them on the host (no device sync per step) and in double precision
        (no float64 tensor: Apple's MPS has none)."""
        if self.steps == 1:
            return [0.0, 1.0]
        log_min = math.log(self.beta_min)
        return [0.0, *(math.exp(log_min * (1 - i / (self.steps - 1))) for i in range(self.steps - 1)), 1.0]

    def betas(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """`beta_values` as a float32 tensor (the rate-distortion path's axis)."""
        return torch.tensor(self.beta_values(), device=device)

    def likelihood_evaluations(self, chains: int) -> int:
        """Decoder passes per image (forward and backward each), pilot chains included: the cost axis
        of the convergence figure. One at the start, then `leapfrog` for each of the steps - 1 transitions
        (the last distribution needs none)."""
        return (chains + self.pilots) * (1 + (self.steps - 1) * self.leapfrog)


class DecoderLikelihood:
    """log p(y | z) and its gradient in z for a batch of rows (one image per row).

    Written out for f(z) = B ReLU(A z + a) + b rather than through autograd: the gradient is
    (y - sigmoid(f)) B, masked by the ReLU, times A, and log p(y | z) = sum_j y_j f_j - softplus(f_j).
    A step then costs its two matrix products and a few elementwise passes over the logits (torch's
    softplus is its fastest stable form on the CPU: BCE-with-logits and sigmoid-then-log take longer).
    A test checks both against autograd; bench/results-cpu.md times it against a textbook AIS.
    """

    def __init__(self, decoder: Decoder, y: torch.Tensor):
        self.y = y
        self.w1, self.b1 = decoder.fc1.weight, decoder.fc1.bias
        self.w2, self.b2 = decoder.fc2.weight, decoder.fc2.bias

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(y | z) and its gradient."""
        logits, grad = self._forward(z)
        return (self.y * logits).sum(-1) - F.softplus(logits).sum(-1), grad

    def gradient(self, z: torch.Tensor) -> torch.Tensor:
        """The gradient alone, a softplus pass cheaper: inner leapfrog steps need no log-likelihood (only
        the last step's enters the acceptance test)."""
        return self._forward(z)[1]

    def _forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = torch.addmm(self.b1, z, self.w1.T)
        logits = torch.addmm(self.b2, pre.clamp_min(0), self.w2.T)
        residual = torch.sub(self.y, torch.sigmoid(logits))  # y - sigmoid(f)
        return logits, (residual @ self.w2).mul_(pre > 0) @ self.w1


def _hmc(target: DecoderLikelihood, z, logl, grad, beta: float, step: torch.Tensor, leapfrog: int,
         generator: torch.Generator):
    """One HMC transition invariant to pi_beta, row by row (`step`: one step size per row).

    Returns the new state and each row's acceptance probability."""
    momentum = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)

    def energy(z_, logl_, p_):
        return 0.5 * (z_.pow(2).sum(-1) + p_.pow(2).sum(-1)) - beta * logl_

    start = energy(z, logl, momentum)
    z_new, logl_new, grad_new = z, logl, grad
    p = momentum - 0.5 * step * (z - beta * grad)
    for i in range(leapfrog):
        z_new = z_new + step * p
        last = i == leapfrog - 1
        if last:
            logl_new, grad_new = target(z_new)
        else:
            grad_new = target.gradient(z_new)
        p = p - (0.5 * step if last else step) * (z_new - beta * grad_new)
    log_accept = (start - energy(z_new, logl_new, p)).nan_to_num(nan=-torch.inf).clamp(max=0.0)
    accept = torch.rand(log_accept.shape, generator=generator, device=z.device, dtype=z.dtype).log() < log_accept
    keep = accept[:, None]
    return (torch.where(keep, z_new, z), torch.where(accept, logl_new, logl), torch.where(keep, grad_new, grad),
            log_accept.exp())


def _anneal(decoder: Decoder, y: torch.Tensor, z: torch.Tensor, betas: list[float], *, chains: int, pilots: int,
            leapfrog: int, generator: torch.Generator, step: float = 1.0, kernels: list[torch.Tensor] | None = None,
            used: list[torch.Tensor] | None = None, tick: Callable[[], object] | None = None,
            trace: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Carry `chains + pilots` chains per image along `betas`, from exact samples `z` of pi_{betas[0]}.

    Rows are chain-major (chain c of image b at row c * B + b); `y` holds one row per image. Returns
    the log weights sum_t (betas[t] - betas[t-1]) log p(y | z_{t-1}) of the first `chains` chains,
    (chains, B). The step size is shared by an image's chains and adapted from the acceptance of its
    `pilots` extra chains only, starting from `step`: the counted chains then run a fixed sequence of
    kernels, as AIS needs (adapting each chain on its own acceptance biases the estimate upwards,
    measurably so in the tests). With `kernels` (one step size per image for each transition, in order),
    the run uses them as given: no adaptation, and no pilots are needed. `used`, when given, receives the
    step sizes the run used, per transition (B,): what a reverse run replays.
    `tick` is called every TICK distributions (the evaluate stage resizes its thread pool there).
    With a `trace` list, each distribution appends its (log Z_beta, distortion) estimate, (2, B): the
    weighted states (z_{t-1}, cumulative weight to t) are properly weighted for pi_{beta_t}.
    """
    rows, n = chains + pilots, len(y)
    if kernels is not None and len(kernels) != max(len(betas) - 2, 0):
        raise ValueError(f"{len(kernels)} step sizes for the {max(len(betas) - 2, 0)} transitions of this path")
    target = DecoderLikelihood(decoder, y.repeat(rows, 1))
    logl, grad = target(z)
    log_step = torch.full((n,), math.log(step), device=z.device, dtype=z.dtype)

    def transition(z, logl, grad, beta, index):
        size = kernels[index] if kernels is not None else log_step.exp()
        if used is not None:
            used.append(size.clone())
        z, logl, grad, accept = _hmc(target, z, logl, grad, beta, size.repeat(rows)[:, None], leapfrog, generator)
        if kernels is None:
            log_step.add_(ADAPT_RATE * (accept.view(rows, n)[chains:].mean(0) - TARGET_ACCEPT))
        return z, logl, grad

    log_w = CompensatedSum(torch.zeros(rows * n, device=z.device, dtype=z.dtype))
    if trace is not None:
        trace.append(_tempered(log_w.total, logl, rows, chains))
    for t in range(1, len(betas)):
        if tick is not None and t % TICK == 0:
            tick()
        log_w.add_((betas[t] - betas[t - 1]) * logl)
        if trace is not None:
            trace.append(_tempered(log_w.total, logl, rows, chains))
        if t < len(betas) - 1:  # the last transition would not change the weights
            z, logl, grad = transition(z, logl, grad, betas[t], t - 1)
    return log_w.total.view(rows, n)[:chains]


def _tempered(log_w: torch.Tensor, logl: torch.Tensor, rows: int, chains: int) -> torch.Tensor:
    """log Z_beta (the log mean weight) and the distortion E[-log p(y | z)] under pi_beta (weights
    normalised over the counted chains), per image: (2, B)."""
    w = log_w.view(rows, -1)[:chains]
    distortion = -(torch.softmax(w, 0) * logl.view(rows, -1)[:chains]).sum(0)
    return torch.stack([_log_mean_exp(w), distortion])


def _log_mean_exp(log_w: torch.Tensor) -> torch.Tensor:
    """log of the mean over chains (dim 0) of exp(log_w), per image."""
    return torch.logsumexp(log_w, 0) - math.log(len(log_w))


@torch.no_grad()
def ais_log_prob(decoder: Decoder, y: torch.Tensor, *, chains: int, schedule: Schedule,
                 generator: torch.Generator, tick: Callable[[], object] | None = None,
                 trace: list[torch.Tensor] | None = None, kernels: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Forward AIS from the prior: per image, log of the mean of `chains` AIS weights (B,).

    A stochastic lower bound on log p(y): its expectation is below log p(y) by an amount that
    vanishes as the schedule lengthens. `trace`: see `_anneal`. `kernels`, when given (a list), receives
    the per-image step size of every transition, for `reverse_ais_log_prob` to replay.
    """
    decoder.eval()
    rows = (chains + schedule.pilots) * len(y)
    z = torch.randn(rows, decoder.z_dim, generator=generator, device=y.device, dtype=y.dtype)
    log_w = _anneal(decoder, y, z, schedule.beta_values(), chains=chains, pilots=schedule.pilots,
                    leapfrog=schedule.leapfrog, generator=generator, step=1.0, used=kernels, tick=tick, trace=trace)
    return _log_mean_exp(log_w)


@dataclass
class AisPath:
    """Forward AIS with its path: per image log p(y) (B,), and for every beta (T + 1,) the tempered
    distribution's log normaliser and distortion (T + 1, B): the exact posterior's rate-distortion curve."""

    log_prob: torch.Tensor
    betas: torch.Tensor
    log_z: torch.Tensor
    distortion: torch.Tensor


@torch.no_grad()
def ais_path(decoder: Decoder, y: torch.Tensor, *, chains: int, schedule: Schedule, generator: torch.Generator,
             tick: Callable[[], object] | None = None) -> AisPath:
    """`ais_log_prob`, same draws and same result, keeping each tempered distribution's estimates."""
    trace: list[torch.Tensor] = []
    log_prob = ais_log_prob(decoder, y, chains=chains, schedule=schedule, generator=generator, tick=tick, trace=trace)
    path = torch.stack(trace, 1)  # (2, T + 1, B)
    return AisPath(log_prob, schedule.betas(y.device), path[0], path[1])


def ais_paths(decoder: Decoder, y: torch.Tensor, *, batch_size: int, **kwargs) -> AisPath:
    """`ais_path` over `y`, `batch_size` images at a time."""
    parts = [ais_path(decoder, chunk, **kwargs) for chunk in y.split(batch_size)]
    return AisPath(torch.cat([p.log_prob for p in parts]), parts[0].betas, torch.cat([p.log_z for p in parts], 1),
                   torch.cat([p.distortion for p in parts], 1))


@torch.no_grad()
def reverse_ais_log_prob(decoder: Decoder, y: torch.Tensor, z_exact: torch.Tensor, *, chains: int,
                         schedule: Schedule, kernels: list[torch.Tensor], generator: torch.Generator,
                         tick: Callable[[], object] | None = None) -> torch.Tensor:
    """Reverse AIS from an exact posterior sample `z_exact` of each image (B, d) down to the prior.

    Its mean weight is an unbiased estimate of 1 / p(y) when its kernels are fixed before it starts
    (Grosse et al. 2015): it replays `kernels`, the per-image step sizes a forward run on the same images
    used (`ais_log_prob(..., kernels=[])`), in reverse order, so nothing about `z_exact` steers them, and
    it needs no pilot chains. Minus the log of the mean weight is then a stochastic upper bound on log p(y).
    Only data simulated from the decoder come with exact posterior samples.
    """
    decoder.eval()
    betas = schedule.beta_values()[::-1]
    log_w = _anneal(decoder, y, z_exact.repeat(chains, 1), betas, chains=chains, pilots=0,
                    leapfrog=schedule.leapfrog, generator=generator, kernels=kernels[::-1], tick=tick)
    return -_log_mean_exp(log_w)


@torch.no_grad()
def simulate(decoder: Decoder, n: int, generator: torch.Generator,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """n images from the fitted model, with the latents that made them: z ~ N(0, I), y ~ p(y | z)."""
    decoder.eval()
    z = torch.randn(n, decoder.z_dim, generator=generator, device=device)
    return torch.bernoulli(torch.sigmoid(decoder(z)), generator=generator), z


def bdmc(decoder: Decoder, n: int, *, chains: int, schedule: Schedule, generator: torch.Generator,
         batch_size: int = 50, tick: Callable[[], object] | None = None) -> dict[str, float]:
    """Forward and reverse AIS on `n` images simulated from `decoder`: the NLL's stochastic upper bound
    (forward), lower bound (reverse, replaying the forward run's step sizes), and their mean distance,
    which bounds the AIS error."""
    device = next(decoder.parameters()).device
    y, z = simulate(decoder, n, generator, device)
    forward, reverse = [], []
    for yb, zb in zip(y.split(batch_size), z.split(batch_size), strict=True):
        kernels: list[torch.Tensor] = []
        forward.append(ais_log_prob(decoder, yb, chains=chains, schedule=schedule, generator=generator, tick=tick,
                                    kernels=kernels))
        reverse.append(reverse_ais_log_prob(decoder, yb, zb, chains=chains, schedule=schedule, kernels=kernels,
                                            generator=generator, tick=tick))
    f, r = host(torch.cat(forward)), host(torch.cat(reverse))  # float64 on the host: gap = upper - lower exactly
    return {"upper_nll": float(-f.mean()), "lower_nll": float(-r.mean()), "gap": float((r - f).mean()),
            "gap_se": standard_error(r - f)}
