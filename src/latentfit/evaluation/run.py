"""`evaluate`: every number of the evaluate stage, in the order its random draws are taken."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..config import EvaluateParams
from ..models import VAE, Decoder
from ..runtime import share_cpus
from .anatomy import anatomy
from .likelihoods import estimator_curves, likelihoods, scores
from .schema import Data, DataTest, Details
from .structure import denoising, entropy_floor, latent_structure, sample_quality


@dataclass
class Evaluation:
    """What the evaluate stage writes: every number (the headline is a few of them) and the rows of its
    CSV curves."""

    details: Details
    prior_curve: list[dict[str, float]]
    denoise: list[dict[str, float]]
    estimators: list[dict[str, Any]]
    rate_distortion: list[dict[str, Any]]  # empty with evaluate.anatomy off


def evaluate(vae: VAE, direct: Decoder, train: dict[str, torch.Tensor], test: dict[str, torch.Tensor],
             p: EvaluateParams, *, hidden: int, generator: torch.Generator, train_draws: torch.Tensor | None = None,
             log: Callable[[dict[str, Any], str], None] = lambda record, prefix: None) -> Evaluation:
    """Both fits on one footing. `train_draws` are the direct fit's own M training draws if it kept them;
    `log(record, prefix)` receives the post-hoc encoders' epoch records."""
    start, g = time.perf_counter(), generator
    x_train, x = train["x"], test["x"]
    decoders = {"vae": vae.decoder, "direct": direct}
    lik = likelihoods(decoders, vae, x_train, x, p, hidden=hidden, g=g, log=log)
    share_cpus()  # between long steps: a neighbouring stage may have started or ended
    vae_fit, direct_fit, gaps, verdict, checks = scores(lik, vae, direct, x, p, g, train_draws)
    denoise = denoising(vae, direct, x[: p.denoise_images], list(p.flip_probs), p.search_candidates, g)
    latent = latent_structure({"vae": vae, "direct": lik.posthoc["direct"]}, x_train, train["y"], x, test["y"], p)
    share_cpus()
    samples = sample_quality(decoders, train, test, p, g)
    curve = estimator_curves(decoders, x[: p.ais_curve_images], lik, p, g)
    why, rd_curve = None, list[dict[str, Any]]()
    if p.anatomy:  # last: its draws come after every other number's, which stay the same without it
        why, rd_curve = anatomy(decoders, {"vae": vae, "direct": lik.posthoc["direct"]}, lik, train, test, p, g,
                                train_draws)
    details = Details(vae=vae_fit, direct=direct_fit, gap=gaps, verdict=verdict, bdmc=checks,
                      data=Data(DataTest(entropy_floor(x))), denoise=denoise, latent=latent, samples=samples,
                      seconds=time.perf_counter() - start, anatomy=why)
    prior_curve = [{"samples": m, "vae": -lik.prior["vae"].log_p[m].mean().item(),
                    "direct": -lik.prior["direct"].log_p[m].mean().item()} for m in sorted(lik.prior["vae"].log_p)]
    return Evaluation(details, prior_curve, [asdict(d) for d in denoise.values()], curve, rd_curve)
