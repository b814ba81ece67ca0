"""One fit's held-out likelihoods, per image: prior sampling on every test image, IWAE on the first
`iwae_images` (through the fit's own encoder, or a post-hoc one), AIS on the first `ais_images` (checked
by BDMC), and each estimator against its cost. Each block draws from its own stream (runtime.stream), so
one block's draws never depend on another's, nor on the other fits."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from latentfit.core.config import EvaluateParams
from latentfit.core.runtime import share_cpus
from latentfit.core.stats import standard_error
from latentfit.evaluation.reference import entropy_floor
from latentfit.evaluation.schema import Bdmc, TestScores
from latentfit.fitting.loops import fit_vae, make_optimizer
from latentfit.fitting.posthoc import posthoc_encoder
from latentfit.inference.ais import AisPath, Schedule, ais_log_prob, ais_paths, bdmc
from latentfit.inference.estimators import (
    Sampled,
    iwae_sampled,
    prior_mc_nll,
    prior_mc_sampled,
    vae_elbo_terms,
)
from latentfit.model.files import FitModel
from latentfit.model.networks import VAE, Decoder

Streams = Callable[[str], torch.Generator]  # a block's name -> its generator


@dataclass
class Likelihoods:
    """One fit's per-image log-likelihood estimates (with their weights' diagnostics and the AIS path),
    and the encoder its IWAE and structure use (its own, or one fitted post hoc to its frozen decoder)."""

    encoder: VAE
    posthoc: VAE  # fitted post hoc: for a fit without an encoder the same as `encoder`, else the control
    prior: Sampled  # log weights kept for the AIS images
    iwae: Sampled
    iwae_posthoc: Sampled | None  # a fit with its own encoder, through the post-hoc one
    ais: AisPath
    bdmc: dict[str, float]


def ais_schedule(p: EvaluateParams) -> Schedule:
    return Schedule(steps=p.ais_steps, leapfrog=p.ais_leapfrog, beta_min=p.ais_beta_min)


def fit_posthoc_encoder(decoder: Decoder, x_train: torch.Tensor, hidden: int, p: EvaluateParams,
                        g: torch.Generator, log: Callable[[dict[str, Any]], None]) -> VAE:
    """An amortised Gaussian encoder fitted by the ELBO to a frozen decoder: a fit without an encoder
    needs one, and a fit with its own gets one too, as a control of what such an encoder costs."""
    model = posthoc_encoder(decoder, hidden)
    records = fit_vae(model, make_optimizer(model.encoder, p.encoder_lr), x_train, epochs=p.encoder_epochs,
                      batch_size=p.encoder_batch_size, generator=g, what="evaluate's post-hoc encoder",
                      lr_key="evaluate.encoder_lr")
    for record in tqdm(records, total=p.encoder_epochs, desc="post-hoc encoder", leave=False):
        log(record)
        share_cpus()  # a neighbouring stage may have started or ended
    return model.eval()


def _iwae(model: VAE, x: torch.Tensor, ks: list[int], g: torch.Generator, batch_size: int = 32) -> Sampled:
    parts = [iwae_sampled(model, y, ks, g) for y in x.split(batch_size)]
    return Sampled({k: torch.cat([part.log_p[k] for part in parts]) for k in parts[0].log_p},
                   torch.cat([part.ess for part in parts]), torch.cat([typing.cast(torch.Tensor, part.log_w)
                                                                       for part in parts]))


def likelihoods(fit: FitModel, x: torch.Tensor, p: EvaluateParams, posthoc: VAE, streams: Streams,
                shared: Streams) -> Likelihoods:
    """`posthoc`: the encoder fitted to the frozen decoder; `streams(block)`: this fit's stream
    of a block; `shared(block)`: one stream all fits share (their prior-sampling draws: common random numbers
    make the paired gap tighter)."""
    encoder = fit.encoder if fit.encoder is not None else posthoc
    share_cpus()  # between long steps: a neighbouring stage may have started or ended
    draws = torch.randn(p.prior_mc_samples, fit.decoder.z_dim, generator=shared("prior_mc"), device=x.device)
    prior = prior_mc_sampled(fit.decoder, x, draws, [*p.prior_mc_curve, len(draws)], p.batch_size, keep=p.ais_images)
    ks = [*p.iwae_curve, p.iwae_samples]
    iwae = _iwae(encoder, x[: p.iwae_images], ks, streams("iwae"))
    control = None if fit.encoder is None else _iwae(posthoc, x[: p.iwae_images], ks, streams("iwae_posthoc"))
    share_cpus()
    schedule = ais_schedule(p)
    ais = ais_paths(fit.decoder, x[: p.ais_images], batch_size=p.ais_batch_size, chains=p.ais_chains,
                    schedule=schedule, generator=streams("ais"), tick=share_cpus)
    share_cpus()
    check = bdmc(fit.decoder, p.bdmc_images, chains=p.ais_chains, schedule=schedule, generator=streams("bdmc"),
                 batch_size=p.ais_batch_size, tick=share_cpus)
    return Likelihoods(encoder, posthoc, prior, iwae, control, ais, check)


def test_scores(fit: FitModel, lik: Likelihoods, x: torch.Tensor, p: EvaluateParams,
                streams: Streams) -> tuple[TestScores, Bdmc, dict[str, torch.Tensor]]:
    """The fit's test scores, its BDMC check, and its per-image columns (NaN past an estimator's images)."""
    nll = {"ais": -lik.ais.log_prob, "iwae": -lik.iwae.log_p[p.iwae_samples],
           "prior_mc": -lik.prior.log_p[p.prior_mc_samples]}
    extra: dict[str, Any] = {}
    columns = {f"prior_mc_{m}": -v for m, v in lik.prior.log_p.items()}
    columns |= {f"iwae_{k}": -v for k, v in lik.iwae.log_p.items()} | {"ais": nll["ais"]}
    if fit.encoder is not None:
        rec, kl = vae_elbo_terms(fit.encoder, x, streams("elbo"), p.batch_size)
        extra |= {"neg_elbo": (rec + kl).mean().item(), "rec": rec.mean().item(), "kl": kl.mean().item()}
        columns |= {"rec": rec, "kl": kl}
    if lik.iwae_posthoc is not None:
        posthoc = -lik.iwae_posthoc.log_p[p.iwae_samples]
        extra["iwae_nll_posthoc"] = posthoc.mean().item()
        columns[f"iwae_posthoc_{p.iwae_samples}"] = posthoc
    if fit.train_draws is not None:
        extra["train_draws_nll"] = prior_mc_nll(fit.decoder, x, fit.train_draws, p.batch_size)
    scores = TestScores(ais_nll=nll["ais"].mean().item(), ais_nll_se=standard_error(nll["ais"]),
                        iwae_nll=nll["iwae"].mean().item(), iwae_nll_se=standard_error(nll["iwae"]),
                        prior_mc_nll=nll["prior_mc"].mean().item(),
                        excess=nll["ais"].mean().item() - entropy_floor(x[: p.ais_images]), **extra)
    return scores, Bdmc(**lik.bdmc), columns


def estimator_curve(fit: FitModel, x: torch.Tensor, lik: Likelihoods, p: EvaluateParams,
                    g: torch.Generator) -> list[dict[str, Any]]:
    """Each estimator's NLL against its cost (decoder passes per image), on the same first images:
    prior sampling against M, IWAE against k, AIS against the length of its schedule."""
    n, rows = len(x), []
    for m, log_p in lik.prior.log_p.items():
        rows.append({"estimator": "prior", "fit": fit.name, "cost": m, "nll": -log_p[:n].mean().item()})
    for k, log_p in lik.iwae.log_p.items():
        rows.append({"estimator": "iwae", "fit": fit.name, "cost": k, "nll": -log_p[:n].mean().item()})
    lengths: dict[int, torch.Tensor | None] = dict.fromkeys(p.ais_curve_steps)
    lengths[p.ais_steps] = lik.ais.log_prob[:n]
    for steps, known in sorted(lengths.items()):
        schedule = dataclasses.replace(ais_schedule(p), steps=steps)
        log_p = known if known is not None else ais_log_prob(fit.decoder, x, chains=p.ais_chains, schedule=schedule,
                                                             generator=g, tick=share_cpus)
        rows.append({"estimator": "ais", "fit": fit.name, "cost": schedule.likelihood_evaluations(p.ais_chains),
                     "nll": -log_p.mean().item(), "steps": steps})
    return rows
