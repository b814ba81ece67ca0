"""Held-out likelihoods of both fits on the same images: prior sampling on every test image, IWAE on the
first `iwae_images`, AIS on the first `ais_images` (checked by BDMC), the paired gaps between the fits,
and each estimator against its cost. Every random draw comes from the passed generator, in a fixed order."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from ..ais import AisPath, Schedule, ais_log_prob, ais_paths, bdmc
from ..config import EvaluateParams
from ..estimators import (
    Sampled,
    iwae_sampled,
    paired_difference,
    prior_mc_nll,
    prior_mc_sampled,
    standard_error,
    vae_elbo,
)
from ..models import VAE, Decoder
from ..posthoc import posthoc_encoder
from ..runtime import share_cpus
from ..training import fit_vae, make_optimizer
from .schema import Bdmc, BdmcPair, EstimatorRow, Fit, Gaps, TestScores, Verdict
from .structure import entropy_floor


@dataclass
class Likelihoods:
    """Per-image log-likelihood estimates of each fit (with their weights' diagnostics and the AIS
    path), and the post-hoc encoders they used."""

    posthoc: dict[str, VAE]  # an encoder for each frozen decoder, by fit
    prior: dict[str, Sampled]  # log weights kept for the AIS images
    iwae: dict[str, Sampled]  # "vae", "direct" (its post-hoc encoder), "vae_posthoc" (the control)
    ais: dict[str, AisPath]
    bdmc: dict[str, dict[str, float]]


def ais_schedule(p: EvaluateParams) -> Schedule:
    return Schedule(steps=p.ais_steps, leapfrog=p.ais_leapfrog, beta_min=p.ais_beta_min)


def fit_posthoc_encoder(decoder: Decoder, x_train: torch.Tensor, hidden: int, p: EvaluateParams,
                        g: torch.Generator, log: Callable[[dict[str, Any]], None]) -> VAE:
    """An amortised Gaussian encoder fitted by the ELBO to a frozen decoder: the direct fit has none,
    and the VAE's decoder gets one too, as a control of what such an encoder costs."""
    model = posthoc_encoder(decoder, hidden)
    records = fit_vae(model, make_optimizer(model.encoder, p.encoder_lr), x_train, epochs=p.encoder_epochs,
                      batch_size=p.encoder_batch_size, generator=g, what="evaluate's post-hoc encoder",
                      lr_key="evaluate.encoder_lr")
    for record in tqdm(records, total=p.encoder_epochs, desc="post-hoc encoder", leave=False):
        log(record)
        share_cpus()  # a neighbouring stage may have started or ended
    return model.eval()


def _prefixed(log: Callable[[dict[str, Any], str], None], prefix: str) -> Callable[[dict[str, Any]], None]:
    return lambda record: log(record, prefix)


def _iwae(model: VAE, x: torch.Tensor, ks: list[int], g: torch.Generator, batch_size: int = 32) -> Sampled:
    parts = [iwae_sampled(model, y, ks, g) for y in x.split(batch_size)]
    return Sampled({k: torch.cat([part.log_p[k] for part in parts]) for k in parts[0].log_p},
                   torch.cat([part.ess for part in parts]), torch.cat([typing.cast(torch.Tensor, part.log_w)
                                                                       for part in parts]))


def likelihoods(decoders: dict[str, Decoder], vae: VAE, x_train: torch.Tensor, x: torch.Tensor, p: EvaluateParams,
                *, hidden: int, g: torch.Generator, log: Callable[[dict[str, Any], str], None]) -> Likelihoods:
    posthoc = {name: fit_posthoc_encoder(dec, x_train, hidden, p, g, _prefixed(log, f"posthoc_{name}."))
               for name, dec in decoders.items()}
    share_cpus()  # between long steps: a neighbouring stage may have started or ended
    draws = torch.randn(p.prior_mc_samples, vae.decoder.z_dim, generator=g, device=x.device)
    sizes = [*p.prior_mc_curve, len(draws)]
    prior = {name: prior_mc_sampled(dec, x, draws, sizes, p.batch_size, keep=p.ais_images)
             for name, dec in decoders.items()}
    ks = [*p.iwae_curve, p.iwae_samples]
    iwae_models = {"vae": vae, "direct": posthoc["direct"], "vae_posthoc": posthoc["vae"]}
    iwae = {name: _iwae(model, x[: p.iwae_images], ks, g) for name, model in iwae_models.items()}
    share_cpus()
    schedule, ais_x = ais_schedule(p), x[: p.ais_images]
    ais = {name: ais_paths(dec, ais_x, batch_size=p.ais_batch_size, chains=p.ais_chains, schedule=schedule,
                           generator=g, tick=share_cpus) for name, dec in tqdm(decoders.items(), desc="AIS", leave=False)}
    share_cpus()
    checks = {name: bdmc(dec, p.bdmc_images, chains=p.ais_chains, schedule=schedule, generator=g,
                         batch_size=p.ais_batch_size, tick=share_cpus) for name, dec in decoders.items()}
    return Likelihoods(posthoc, prior, iwae, ais, checks)


def scores(lik: Likelihoods, vae: VAE, direct: Decoder, x: torch.Tensor, p: EvaluateParams, g: torch.Generator,
           train_draws: torch.Tensor | None) -> tuple[Fit, Fit, Gaps, Verdict, BdmcPair]:
    """Both fits' test scores, their paired gaps, and every estimator on the verdict's images."""
    m_all, k_all, n = p.prior_mc_samples, p.iwae_samples, p.ais_images
    nll = {"ais": {f: -lik.ais[f].log_prob for f in ("vae", "direct")},
           "iwae": {f: -lik.iwae[f].log_p[k_all] for f in ("vae", "direct")},
           "prior_mc": {f: -lik.prior[f].log_p[m_all] for f in ("vae", "direct")}}
    floor = entropy_floor(x[: p.ais_images])
    common = {f: {"ais_nll": nll["ais"][f].mean().item(), "ais_nll_se": standard_error(nll["ais"][f]),
                  "iwae_nll": nll["iwae"][f].mean().item(), "iwae_nll_se": standard_error(nll["iwae"][f]),
                  "prior_mc_nll": nll["prior_mc"][f].mean().item(), "excess": nll["ais"][f].mean().item() - floor}
              for f in ("vae", "direct")}
    elbo = vae_elbo(vae, x, g, p.batch_size)
    vae_test = TestScores(**common["vae"], neg_elbo=elbo["neg_elbo"], rec=elbo["rec"], kl=elbo["kl"],
                          iwae_nll_posthoc=-lik.iwae["vae_posthoc"].log_p[k_all].mean().item())
    direct_test = TestScores(**common["direct"], train_draws_nll=None if train_draws is None else
                             prior_mc_nll(direct, x, train_draws, p.batch_size))
    gaps = Gaps(**{est: paired_difference(v["direct"], v["vae"]) for est, v in nll.items()})
    verdict = Verdict(**{est: EstimatorRow(vae=v["vae"][:n].mean().item(), direct=v["direct"][:n].mean().item(),
                                           **dataclasses.asdict(paired_difference(v["direct"][:n], v["vae"][:n])))
                         for est, v in nll.items()})
    checks = BdmcPair(vae=Bdmc(**lik.bdmc["vae"]), direct=Bdmc(**lik.bdmc["direct"]))
    return Fit(vae_test), Fit(direct_test), gaps, verdict, checks


def estimator_curves(decoders: dict[str, Decoder], x: torch.Tensor, lik: Likelihoods, p: EvaluateParams,
                     g: torch.Generator) -> list[dict[str, Any]]:
    """Each estimator's NLL against its cost (decoder passes per image), on the same first images:
    prior sampling against M, IWAE against k, AIS against the length of its schedule."""
    n, rows = len(x), []
    for name, dec in decoders.items():
        for m, log_p in lik.prior[name].log_p.items():
            rows.append({"estimator": "prior", "fit": name, "cost": m, "nll": -log_p[:n].mean().item()})
        for k, log_p in lik.iwae[name].log_p.items():
            rows.append({"estimator": "iwae", "fit": name, "cost": k, "nll": -log_p[:n].mean().item()})
        lengths: dict[int, torch.Tensor | None] = dict.fromkeys(p.ais_curve_steps)
        lengths[p.ais_steps] = lik.ais[name].log_prob[:n]
        for steps, known in sorted(lengths.items()):
            schedule = dataclasses.replace(ais_schedule(p), steps=steps)
            log_p = known if known is not None else ais_log_prob(dec, x, chains=p.ais_chains, schedule=schedule,
                                                                 generator=g, tick=share_cpus)
            rows.append({"estimator": "ais", "fit": name, "cost": schedule.likelihood_evaluations(p.ais_chains),
                         "nll": -log_p.mean().item(), "steps": steps})
    return rows
