"""Why one decoder wins, measured on one footing (each fit's `anatomy`, from streams of its own, so switching
it off changes no other number): the inference gaps on the AIS test images and on training images, the
exact posterior's rate and distortion from the AIS path, the encoder's use of the latent space, the
reliability of each importance-sampling estimate; a fit that kept its M training draws as the mixture it
trains. (The paired gap by class is the comparison's: evaluation/compare.py.) The math is in gaps.py."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from latentfit.core.config import EvaluateParams
from latentfit.core.runtime import share_cpus
from latentfit.core.stats import host, paired_difference, standard_error
from latentfit.evaluation.anatomy_records import (
    DecoderAnatomy,
    EncoderUse,
    InferenceGaps,
    Mixture,
    RateDistortion,
    Reliability,
)
from latentfit.evaluation.blocks import Block, Part, load_state, per_image
from latentfit.evaluation.likelihoods import Likelihoods, Streams, ais_schedule
from latentfit.inference.ais import AisPath, ais_paths
from latentfit.inference.diagnostics import (
    PARETO_K_LIMIT,
    GaussianFit,
    active_units,
    component_use,
    gaussian_elbo,
    kl_per_dimension,
    optimise_gaussian,
    pareto_k,
    rate_distortion,
    responsibilities,
)
from latentfit.inference.estimators import Sampled
from latentfit.inference.reconstruct import encode
from latentfit.model.files import FitModel
from latentfit.model.likelihood import mc_marginal_log_prob
from latentfit.model.networks import VAE, Decoder

RD_POINTS = 60  # betas of the rate-distortion curve written to its CSV
RD_COLUMNS = ["fit", "beta", "rate", "distortion"]


def inference_gaps(decoder: Decoder, encoder: VAE, x: torch.Tensor, ais_nll: torch.Tensor, p: EvaluateParams,
                   g: torch.Generator) -> tuple[InferenceGaps, dict[str, dict[str, torch.Tensor]]]:
    """The decomposition on images `x` whose AIS NLL is `ais_nll`; also each q's per-image elbo, rec, kl."""
    start = GaussianFit.diagonal(*encode(encoder, x))
    options: dict[str, Any] = {"steps": p.gap_steps, "samples": p.gap_samples, "lr": p.gap_lr, "generator": g}
    family = {"amortised": start, "optimised": optimise_gaussian(decoder, x, start, full=False, **options)}
    if p.gap_full_covariance:
        family["optimised_full"] = optimise_gaussian(decoder, x, family["optimised"], full=True, **options)
    eps = torch.randn(p.gap_eval_samples, *start.mu.shape, generator=g, device=x.device)
    chunks = eps.split(max(1, 20000 // len(x)))  # about 20000 decoded rows at a time
    terms = {}
    for name, q in family.items():
        parts = [gaussian_elbo(decoder, x, q, chunk) for chunk in chunks]
        weights = torch.tensor([len(c) / len(eps) for c in chunks], device=x.device, dtype=x.dtype)
        rec = sum(w * part["rec"] for w, part in zip(weights, parts, strict=True))
        terms[name] = {"rec": rec, "kl": parts[0]["kl"], "elbo": -(rec + parts[0]["kl"])}
    neg = {name: -t["elbo"] for name, t in terms.items()}
    best = neg.get("optimised_full", neg["optimised"])
    gaps = InferenceGaps(
        images=len(x), amortised=neg["amortised"].mean().item(), optimised=neg["optimised"].mean().item(),
        optimised_full=neg["optimised_full"].mean().item() if "optimised_full" in neg else None,
        ais=ais_nll.mean().item(), amortisation=paired_difference(neg["amortised"], neg["optimised"]),
        approximation=paired_difference(best, ais_nll),
        covariance=paired_difference(neg["optimised"], best) if "optimised_full" in neg else None,
        ais_se=standard_error(ais_nll))
    return gaps, terms


def _posterior(path: AisPath) -> tuple[RateDistortion, list[dict[str, float]], torch.Tensor]:
    """The exact posterior's rate and distortion at beta = 1, the mean curve over betas, and each image's rate."""
    rd = rate_distortion(path.betas, path.log_z, path.distortion)
    rate, distortion = rd.rate[-1], rd.distortion[-1]
    point = RateDistortion(rate.mean().item(), standard_error(rate), distortion.mean().item(),
                           standard_error(distortion))
    keep = np.unique(np.linspace(0, len(rd.beta) - 1, RD_POINTS).round().astype(int))
    curve = [{"beta": rd.beta[i].item(), "rate": rd.rate[i].mean().item(), "distortion": rd.distortion[i].mean().item()}
             for i in keep]
    return point, curve, rate


def _encoder_use(encoder: VAE, x: torch.Tensor, amortised: dict[str, torch.Tensor]) -> EncoderUse:
    """Active units and KL per dimension over the test images `x`; rate and distortion on the AIS images."""
    mu, logvar = encode(encoder, x)
    kl = kl_per_dimension(mu, logvar).sort(descending=True).values
    return EncoderUse(active_units(mu), [round(v, 4) for v in kl.tolist()], amortised["kl"].mean().item(),
                      amortised["rec"].mean().item())


def _reliability(sampled: Sampled, draws: int, rate: torch.Tensor | None = None) -> Reliability:
    ess = host(sampled.ess)
    k = pareto_k(sampled.log_w) if sampled.log_w is not None else np.array([])
    above = None if rate is None else int((rate[: len(k)] > math.log(draws)).sum())
    median = float(np.median(k)) if len(k) else math.nan
    return Reliability(draws=draws, images=len(ess), ess_median=float(np.median(ess)), ess_min=float(ess.min()),
                       k_images=len(k), k_median=median if math.isfinite(median) else None,
                       flagged=int((k > PARETO_K_LIMIT).sum()), rate_above_log_draws=above)


@torch.no_grad()
def _mixture(direct: Decoder, x_train: torch.Tensor, images: torch.Tensor, ais_nll: torch.Tensor,
             draws: torch.Tensor, x_test: torch.Tensor) -> Mixture:
    use = component_use(responsibilities(direct, x_train, draws))
    logits = direct.eval()(draws)
    objective = -mc_marginal_log_prob(images, logits)
    return Mixture(**use, images=len(images), objective_nll=objective.mean().item(), ais_nll=ais_nll.mean().item(),
                   objective_gap=paired_difference(objective, ais_nll),
                   test_objective_nll=-mc_marginal_log_prob(x_test, logits).mean().item())


def anatomy(fit: FitModel, lik: Likelihoods, train: dict[str, torch.Tensor], test: dict[str, torch.Tensor],
            p: EvaluateParams, streams: Streams) -> tuple[DecoderAnatomy, Mixture | None, list[dict[str, Any]],
                                                            dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The fit's anatomy, its mixture (with training draws), the rate-distortion curve's rows (fit, beta,
    rate, distortion), and per-image columns on the AIS test images and on the training images."""
    x, x_train = test["x"][: p.ais_images], train["x"][: p.gap_train_images]
    share_cpus()
    test_gaps, terms = inference_gaps(fit.decoder, lik.encoder, x, -lik.ais.log_prob, p, streams("gaps_test"))
    train_gaps, train_columns, train_ais = None, {}, None
    if len(x_train):
        path = ais_paths(fit.decoder, x_train, batch_size=p.ais_batch_size, chains=p.ais_chains,
                         schedule=ais_schedule(p), generator=streams("ais_train"), tick=share_cpus)
        train_ais = -path.log_prob
        train_gaps, train_terms = inference_gaps(fit.decoder, lik.encoder, x_train, train_ais, p, streams("gaps_train"))
        train_columns = {"ais": train_ais} | {f"{q}_neg_elbo": -t["elbo"] for q, t in train_terms.items()}
    posterior, rows, rate = _posterior(lik.ais)
    result = DecoderAnatomy(test=test_gaps, train=train_gaps, posterior=posterior,
                            encoder=_encoder_use(lik.encoder, test["x"], terms["amortised"]),
                            prior_sampling=_reliability(lik.prior, p.prior_mc_samples, rate),
                            iwae=_reliability(lik.iwae, p.iwae_samples))
    mixture = None
    if fit.train_draws is not None and train_ais is not None:
        mixture = _mixture(fit.decoder, train["x"], x_train, train_ais, fit.train_draws, x)
    test_columns = {f"{q}_neg_elbo": -t["elbo"] for q, t in terms.items()}
    test_columns |= {"posterior_rate": rate, "posterior_distortion": -lik.ais.log_prob - rate}
    return result, mixture, [{"fit": fit.name, **row} for row in rows], test_columns, train_columns


def anatomy_part(b: Block) -> Part:
    """The fit's anatomy from its likelihood block (its AIS path, importance weights and post-hoc encoder), as
    the part evaluate@<fit> merges: numbers, per-image columns (test and training images), the curve."""
    if not b.params.evaluate.anatomy:
        return Part({}, {"images": per_image({}, b.test["y"][:0], "test"), "rate_distortion": pd.DataFrame(
            columns=RD_COLUMNS)})
    state = load_state(b.name, "likelihood", b.device)
    weights = {name: Sampled({}, state[name]["ess"], state[name]["log_w"]) for name in ("prior", "iwae")}
    lik = Likelihoods(b.encoder(), b.posthoc(), weights["prior"], weights["iwae"], None, AisPath(**state["ais"]), {})
    why, mixture, rd_curve, test_columns, train_columns = anatomy(b.fit, lik, b.train, b.test, b.params.evaluate, b.own)
    images = per_image(test_columns, b.test["y"][: len(next(iter(test_columns.values())))], "test")
    if train_columns:
        n = len(next(iter(train_columns.values())))
        images = pd.concat([images, per_image(train_columns, b.train["y"][:n], "train")], ignore_index=True)
    scores = {"anatomy": dataclasses.asdict(why)} | ({"mixture": dataclasses.asdict(mixture)} if mixture else {})
    return Part(scores, {"images": images, "rate_distortion": pd.DataFrame(rd_curve, columns=RD_COLUMNS)})
