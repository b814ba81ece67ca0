"""Why one decoder wins: each fit's `anatomy` numbers (metrics/<fit>/scores.json's `anatomy` and
`mixture`) and the gap by class of the comparison. Numpy only."""

from __future__ import annotations

from dataclasses import dataclass

from latentfit.core.stats import Interval


@dataclass(frozen=True)
class InferenceGaps:
    """One decoder on one set of images, -ELBO (nats per image) of: the encoder's q (amortised), the best
    diagonal Gaussian for each image, the best full-covariance one; and the AIS NLL. Paired over images:
    amortisation = amortised - best diagonal, covariance = best diagonal - best full, approximation =
    best Gaussian - AIS (each >= 0 in theory; their sum is the amortised -ELBO minus the AIS NLL)."""

    images: int
    amortised: float
    optimised: float
    optimised_full: float | None
    ais: float
    amortisation: Interval
    approximation: Interval
    covariance: Interval | None = None
    ais_se: float | None = None  # the AIS NLL's standard error over these images


@dataclass(frozen=True)
class RateDistortion:
    """The exact posterior p(z | y), from the AIS path at beta = 1: rate = KL(p(z | y) || p(z)),
    distortion = E[-log p(y | z)]; rate + distortion = the AIS NLL. Means over images, with their se."""

    rate: float
    rate_se: float
    distortion: float
    distortion_se: float


@dataclass(frozen=True)
class EncoderUse:
    """The amortised q (the VAE's encoder, or the direct fit's post-hoc one)."""

    active_units: int  # Burda et al.: Cov_y(E_q[z_u]) > 0.01 over all test images
    kl_per_dim: list[float]  # mean KL(q(z_u | y) || N(0, 1)) over all test images, by dimension, largest first
    rate: float  # its mean KL(q || p(z)) and reconstruction term on the AIS images, beside the exact posterior's
    distortion: float


@dataclass(frozen=True)
class Reliability:
    """One importance-sampling estimate's weights, per image: effective sample size and PSIS's Pareto k."""

    draws: int
    images: int  # images with an ESS
    ess_median: float
    ess_min: float
    k_images: int  # images with a Pareto k (their weights are kept)
    k_median: float | None  # None: k is infinite for most images (their weights span more than float64's range)
    flagged: int  # of them, k > 0.7: the estimate cannot be trusted
    rate_above_log_draws: int | None = None  # prior sampling: images whose posterior rate exceeds log M


@dataclass(frozen=True)
class DecoderAnatomy:
    test: InferenceGaps
    train: InferenceGaps | None
    posterior: RateDistortion
    encoder: EncoderUse
    prior_sampling: Reliability
    iwae: Reliability


@dataclass(frozen=True)
class Mixture:
    """The direct fit's objective with its M training draws fixed is the log-likelihood of an M-component
    Bernoulli mixture: how it uses them, and what it is worth on its own training images."""

    components: int
    used: int  # components that carry at least one training image's worth of responsibility
    perplexity: float  # exp(entropy of the pooled responsibility): the effective number of components
    per_image: float  # mean 1 / sum_m r_m^2: components that share one image
    images: int  # training images of the two NLLs below
    objective_nll: float  # -(its training objective) on them
    ais_nll: float
    objective_gap: Interval  # objective - AIS NLL, paired
    test_objective_nll: float  # the objective on the verdict's test images (the AIS images)


@dataclass(frozen=True)
class ClassGap:
    """The paired gap fit - baseline on the images of one class."""

    ais: Interval
    iwae: Interval
