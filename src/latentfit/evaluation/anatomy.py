"""Why one decoder wins, measured on one footing (the evaluate stage's `anatomy`, after every other
number, so switching it off changes none of them): for each decoder the inference gaps on the AIS test
images and on training images, the exact posterior's rate and distortion from the AIS path, the
encoder's use of the latent space, the reliability of each importance-sampling estimate; the direct
fit as the mixture it trains; the paired gap by class. The math is in gaps.py."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..ais import AisPath, ais_paths
from ..config import EvaluateParams
from ..estimators import Sampled, paired_difference, standard_error
from ..gaps import (
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
from ..inference import encode
from ..likelihood import mc_marginal_log_prob
from ..models import VAE, Decoder
from ..runtime import share_cpus
from .likelihoods import Likelihoods, ais_schedule
from .why import (
    Anatomy,
    ClassGap,
    DecoderAnatomy,
    EncoderUse,
    InferenceGaps,
    Mixture,
    RateDistortion,
    Reliability,
)

RD_POINTS = 60  # betas of the rate-distortion curve written to its CSV


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
    ess = sampled.ess.double()
    k = pareto_k(sampled.log_w) if sampled.log_w is not None else np.array([])
    above = None if rate is None else int((rate[: len(k)] > math.log(draws)).sum())
    median = float(np.median(k)) if len(k) else math.nan
    return Reliability(draws=draws, images=len(ess), ess_median=ess.median().item(), ess_min=ess.min().item(),
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


def _by_class(lik: Likelihoods, labels: torch.Tensor, p: EvaluateParams) -> dict[str, ClassGap]:
    ais = {f: -lik.ais[f].log_prob for f in ("vae", "direct")}
    iwae = {f: -lik.iwae[f].log_p[p.iwae_samples] for f in ("vae", "direct")}
    out = {}
    for c in sorted(set(labels[: p.ais_images].tolist())):
        a, i = labels[: p.ais_images] == c, labels[: len(iwae["vae"])] == c
        if a.sum() > 1 and i.sum() > 1:
            out[str(c)] = ClassGap(paired_difference(ais["direct"][a], ais["vae"][a]),
                                   paired_difference(iwae["direct"][i], iwae["vae"][i]))
    return out


def anatomy(decoders: dict[str, Decoder], encoders: dict[str, VAE], lik: Likelihoods, train: dict[str, torch.Tensor],
            test: dict[str, torch.Tensor], p: EvaluateParams, g: torch.Generator,
            train_draws: torch.Tensor | None) -> tuple[Anatomy, list[dict[str, Any]]]:
    """Every number of the anatomy, and the rate-distortion curve's rows (fit, beta, rate, distortion)."""
    x, x_train = test["x"][: p.ais_images], train["x"][: p.gap_train_images]
    fits, curve, train_ais = {}, [], {}
    for name, decoder in decoders.items():
        share_cpus()
        test_gaps, terms = inference_gaps(decoder, encoders[name], x, -lik.ais[name].log_prob, p, g)
        train_gaps = None
        if len(x_train):
            path = ais_paths(decoder, x_train, batch_size=p.ais_batch_size, chains=p.ais_chains,
                             schedule=ais_schedule(p), generator=g, tick=share_cpus)
            train_ais[name] = -path.log_prob
            train_gaps, _ = inference_gaps(decoder, encoders[name], x_train, train_ais[name], p, g)
        posterior, rows, rate = _posterior(lik.ais[name])
        curve += [{"fit": name, **row} for row in rows]
        fits[name] = DecoderAnatomy(
            test=test_gaps, train=train_gaps, posterior=posterior,
            encoder=_encoder_use(encoders[name], test["x"], terms["amortised"]),
            prior_sampling=_reliability(lik.prior[name], p.prior_mc_samples, rate),
            iwae=_reliability(lik.iwae[name], p.iwae_samples))
    mixture = None
    if train_draws is not None and "direct" in train_ais:
        mixture = _mixture(decoders["direct"], train["x"], x_train, train_ais["direct"], train_draws, x)
    result = Anatomy(vae=fits["vae"], direct=fits["direct"], mixture=mixture, by_class=_by_class(lik, test["y"], p))
    return result, curve
