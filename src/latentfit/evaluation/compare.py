"""The comparison (the final stage's numbers): every fit against the baseline, paired over the same test
images from the per-image results each `evaluate@<fit>` stage wrote, and the curves of all fits side by
side. Numpy and pandas only: nothing here runs a model."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from latentfit.core.config import EvaluateParams
from latentfit.core.fits import BASELINE
from latentfit.evaluation.anatomy_records import ClassGap
from latentfit.evaluation.schema import (
    ESTIMATORS,
    Details,
    EstimatorRow,
    FitScores,
    Gaps,
    Pair,
    Reference,
    Verdict,
    interval,
)


def estimator_nll(images: pd.DataFrame, p: EvaluateParams) -> dict[str, np.ndarray]:
    """Per test image, each estimator's NLL over the images it ran on (AIS, IWAE: the first ones)."""
    test = images[images["split"] == "test"].sort_values("image")
    columns = {"ais": "ais", "iwae": f"iwae_{p.iwae_samples}", "prior_mc": f"prior_mc_{p.prior_mc_samples}"}
    return {est: test[column].dropna().to_numpy() for est, column in columns.items()}


def _by_class(fit: dict[str, np.ndarray], base: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, ClassGap]:
    out = {}
    for c in sorted(set(labels[: len(fit["ais"])].tolist())):
        a, i = labels[: len(fit["ais"])] == c, labels[: len(fit["iwae"])] == c
        if a.sum() > 1 and i.sum() > 1:
            out[str(c)] = ClassGap(interval(fit["ais"][a] - base["ais"][a]), interval(fit["iwae"][i] - base["iwae"][i]))
    return out


def pair(fit: dict[str, np.ndarray], base: dict[str, np.ndarray], labels: np.ndarray, n: int) -> Pair:
    """One fit against the baseline: each estimator's paired gap on all its images and on the first n."""
    gaps = Gaps(**{est: interval(fit[est] - base[est]) for est in ESTIMATORS})
    rows = {}
    for est in ESTIMATORS:
        a, b = fit[est][:n], base[est][:n]
        gap = interval(a - b)
        rows[est] = EstimatorRow(fit=float(a.mean()), baseline=float(b.mean()), mean=gap.mean, se=gap.se, lo=gap.lo,
                                 hi=gap.hi, images=gap.images)
    return Pair(gaps, Verdict(**rows), _by_class(fit, base, labels))


def compare(scores: Mapping[str, FitScores], images: Mapping[str, pd.DataFrame], reference: Reference,
            p: EvaluateParams, baseline: str = BASELINE) -> Details:
    """Every fit's numbers and each fit's pair with the baseline (the first fit when the baseline is absent)."""
    baseline = baseline if baseline in scores else next(iter(scores))
    nll = {name: estimator_nll(frame, p) for name, frame in images.items()}
    test = images[baseline][images[baseline]["split"] == "test"].sort_values("image")
    labels = test["label"].to_numpy()
    pairs = {name: pair(nll[name], nll[baseline], labels, p.ais_images) for name in scores if name != baseline}
    return Details(baseline=baseline, fits=dict(scores), reference=reference, pairs=pairs)


def prior_curve(images: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Prior-sampling NLL against the number of draws M, a column per fit."""
    rows: dict[int, dict[str, float]] = {}
    for name, frame in images.items():
        test = frame[frame["split"] == "test"]
        for column in test.columns:
            if column.startswith("prior_mc_"):
                m = int(column.removeprefix("prior_mc_"))
                rows.setdefault(m, {"samples": m})[name] = float(test[column].mean())
    return pd.DataFrame([rows[m] for m in sorted(rows)])


def denoise_table(scores: Mapping[str, FitScores]) -> pd.DataFrame:
    """Denoising error against the flip probability, a bce and an mse column per fit."""
    first = next(iter(scores.values())).denoise
    return pd.DataFrame([{"flip_prob": entry.flip_prob, **{f"{name}_{err}": getattr(s.denoise[key], err)
                                                            for name, s in scores.items() for err in ("bce", "mse")}}
                         for key, entry in first.items()])


def long_form(curve: str, curves: Mapping[str, pd.DataFrame], histories: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """A curve as DVC's plots read it: a row per fit and point with a `fit` column (templates in .dvc/plots/
    draw a line per fit), so no plot definition lists the fits. `training` is each fit's objective per epoch."""
    if curve == "training":
        return pd.concat([pd.DataFrame({"fit": name, "epoch": h["epoch"],
                                        "objective": h.get("neg_iwae", h.get("neg_elbo", h.get("nll")))})
                          for name, h in histories.items()], ignore_index=True)
    table = curves[curve]
    if curve == "prior_mc":
        return table.melt(id_vars="samples", var_name="fit", value_name="nll")[["fit", "samples", "nll"]]
    if curve == "denoise":
        fits = dict.fromkeys(c.rsplit("_", 1)[0] for c in table.columns if c != "flip_prob")
        return pd.concat([pd.DataFrame({"fit": f, "flip_prob": table["flip_prob"], "bce": table[f"{f}_bce"],
                                        "mse": table[f"{f}_mse"]}) for f in fits], ignore_index=True)
    return table
