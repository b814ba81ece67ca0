"""Every per-fit number, registered once (METRICS): the headline `dvc exp show` lists, the report's table and
the sweep's summary iterate it, and MLflow gets it through the headline. A new metric is its computation
(a field of the schema) and one line here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from latentfit.evaluation.schema import FitScores


@dataclass(frozen=True)
class Metric:
    """One per-fit number, registered once: the headline (`dvc exp show`), the report's table, the sweep's
    summary and MLflow (through the headline) iterate METRICS. `label` and `meaning` are formatted with the
    evaluate params `p` and the data's numbers `ref`; `headline(fit)` says whether a fit has the column."""

    key: str  # the headline group and sweep key: `ais` -> `ais.<fit>`
    label: str
    read: Callable[[FitScores], float | None]
    meaning: str = ""
    digits: int = 2
    se: Callable[[FitScores], float | None] | None = None
    headline: Callable[[FitScores], bool] | None = None  # None: not a `dvc exp show` column
    sweep: bool = True  # summarised over seeds by `latentfit sweep summary`


def _always(f: FitScores) -> bool:
    return True


METRICS: list[Metric] = [
    Metric("ais", "AIS NLL ({p.ais_chains} chains, {p.ais_steps} distributions, first {p.ais_images} test images)",
           lambda f: f.test.ais_nll, "held-out -log p(y) by annealed importance sampling from the prior (HMC): no "
           "encoder, the same for every decoder; a stochastic upper bound whose looseness BDMC measures",
           se=lambda f: f.test.ais_nll_se, headline=_always),
    Metric("iwae", "IWAE NLL (k = {p.iwae_samples}, first {p.iwae_images} test images)", lambda f: f.test.iwae_nll,
           "importance sampling with an encoder as proposal (post hoc for a fit without one); tightens with k",
           se=lambda f: f.test.iwae_nll_se, headline=_always),
    Metric("excess", "excess over the entropy floor", lambda f: f.test.excess,
           "AIS NLL minus sum_j H(y_j) of the same images (all test images: {ref.entropy_floor:.2f})", sweep=False),
    Metric("prior", "prior-sampling NLL (M = {p.prior_mc_samples} fresh draws)", lambda f: f.test.prior_mc_nll,
           "-log (1/M) sum_m p(y \\| z_m), z_m from the prior: biased upwards for small M",
           headline=lambda f: f.test.neg_elbo is None),  # the headline's bound of a fit without an encoder
    Metric("train_draws", "NLL with the fit's own training draws", lambda f: f.test.train_draws_nll,
           "the same estimator with the very M draws a direct fit trained on", sweep=False),
    Metric("nelbo", "test -ELBO", lambda f: f.test.neg_elbo, "a fit's bound with its own encoder, one draw per image",
           headline=_always),
    Metric("rec", "  of which reconstruction", lambda f: f.test.rec, "E_q[-log p(y \\| z)]", sweep=False),
    Metric("kl", "  of which KL", lambda f: f.test.kl, "KL(q(z \\| y) \\|\\| p(z))", sweep=False),
    Metric("iwae_posthoc", "IWAE NLL, post-hoc encoder (control)", lambda f: f.test.iwae_nll_posthoc,
           "a decoder with its own encoder measured the way one without is: close to the IWAE row means fair",
           sweep=False),
    Metric("rate", "posterior rate (exact posterior, first {p.ais_images} test images)",
           lambda f: f.anatomy.posterior.rate if f.anatomy else None,
           "KL(p(z \\| y) \\|\\| p(z)) in nats, from the AIS chains at beta = 1: a prior draw lands in the posterior "
           "with probability about exp(-rate), so a direct fit's M draws cover it only where log M nears it"),
    Metric("knn", "kNN accuracy of latent means (k = {p.knn_neighbours})", lambda f: f.latent.knn_accuracy,
           "labels predicted from the nearest training latents: class structure the latent space keeps", digits=3),
    Metric("silhouette", "silhouette of label clusters", lambda f: f.latent.silhouette, "-1 .. 1, higher: separated",
           digits=3, sweep=False),
    Metric("fd", "Frechet distance of prior samples", lambda f: f.sample_fd,
           "classifier features of samples vs test images (real train vs test: {ref.data_fd:.2f})"),
]
