"""`evaluate_fit`: every number of one fit's evaluate stage (`evaluate@<fit>`). Each block draws from its
own stream, derived from `evaluate.seed`, the fit's name and the block's name (runtime.stream), so a block
added, removed or moved, or another fit, changes none of this fit's numbers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from latentfit.core.config import EvaluateParams
from latentfit.core.runtime import share_cpus, stream
from latentfit.evaluation.anatomy import anatomy
from latentfit.evaluation.likelihoods import Likelihoods, estimator_curve, likelihoods, test_scores
from latentfit.evaluation.schema import FitScores, RanOn
from latentfit.evaluation.structure import denoising, latent_structure, sample_fd
from latentfit.fitting.posthoc import Classifier
from latentfit.model.files import FitModel

RD_COLUMNS = ["fit", "beta", "rate", "distortion"]


@dataclass
class FitEvaluation:
    """What one fit's evaluate stage writes: its numbers, its per-image results (one row per test image, and
    per training image of the anatomy; NaN where an estimator did not run), and the rows of its curves."""

    scores: FitScores
    images: pd.DataFrame
    estimators: list[dict[str, Any]]
    rate_distortion: list[dict[str, Any]]  # empty with evaluate.anatomy off
    likelihoods: Likelihoods  # kept for the figure data: the encoder the fit's figures use
    timings: dict[str, float]  # seconds per block, for the log and MLflow (not a result: it varies run to run)


def _per_image(columns: dict[str, torch.Tensor], labels: torch.Tensor, split: str) -> pd.DataFrame:
    n = len(labels)
    frame = pd.DataFrame({"split": split, "image": np.arange(n), "label": labels.cpu().numpy()})
    for name, values in columns.items():
        column = np.full(n, np.nan)
        column[: len(values)] = values.detach().cpu().numpy().astype(np.float64)
        frame[name] = column
    return frame


def evaluate_fit(fit: FitModel, train: dict[str, torch.Tensor], test: dict[str, torch.Tensor], p: EvaluateParams, *,
                 classifier: Classifier, reference: tuple[np.ndarray, np.ndarray], model_md5: str = "",
                 log: Callable[[dict[str, Any], str], None] = lambda record, prefix: None,
                 ran_on: RanOn | None = None) -> FitEvaluation:
    """One fit on the test images. `classifier` and `reference` (the test images' feature mean and
    covariance) come from the reference stage; `log(record, prefix)` receives the post-hoc encoder's epochs;
    `ran_on` (the device) goes on the record."""
    start, x_train, x = time.perf_counter(), train["x"], test["x"]
    device = x.device

    def own(block: str) -> torch.Generator:
        return stream(p.seed, fit.name, block, device=device)

    def shared(block: str) -> torch.Generator:  # common random numbers: the same draws for every fit
        return stream(p.seed, block, device=device)

    timings: dict[str, float] = {}
    last = start

    def done(block: str) -> None:
        nonlocal last
        now = time.perf_counter()
        timings[block], last = now - last, now
        share_cpus()  # between long steps: a neighbouring stage may have started or ended

    lik = likelihoods(fit, x_train, x, p, own, shared, lambda record: log(record, "posthoc."))
    done("likelihoods")
    scores, check, columns = test_scores(fit, lik, x, p, own)
    denoise = denoising(fit, x[: p.denoise_images], list(p.flip_probs), p.search_candidates, shared)
    done("denoising")
    latent = latent_structure(lik.encoder, x_train, train["y"], x, test["y"], p)
    fd = sample_fd(fit.decoder, classifier, reference, min(p.fid_samples, len(x)), own("samples"))
    done("latent_and_samples")
    curve = estimator_curve(fit, x[: p.ais_curve_images], lik, p, own("ais_curve"))
    done("estimator_curve")
    why = mixture = None
    rd_curve: list[dict[str, Any]] = []
    train_columns: dict[str, torch.Tensor] = {}
    if p.anatomy:
        why, mixture, rd_curve, test_more, train_columns = anatomy(fit, lik, train, test, p, own)
        columns |= test_more
        done("anatomy")
    images = _per_image(columns, test["y"], "test")
    if train_columns:
        n = len(next(iter(train_columns.values())))
        images = pd.concat([images, _per_image(train_columns, train["y"][:n], "train")], ignore_index=True)
    result = FitScores(fit=fit.name, own_encoder=fit.encoder is not None, model_md5=model_md5, test=scores,
                       bdmc=check, denoise=denoise, latent=latent, sample_fd=fd,
                       seconds=time.perf_counter() - start, anatomy=why, mixture=mixture, ran_on=ran_on)
    return FitEvaluation(result, images, curve, rd_curve, lik, timings)
