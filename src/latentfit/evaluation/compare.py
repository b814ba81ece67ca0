"""The comparison (the final stage's numbers): every fit against the baseline, paired over the same test
images from the per-image results each `evaluate@<fit>` stage wrote, and the curves of all fits side by
side. Numpy and pandas only: nothing here runs a model."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from latentfit.core.config import EvaluateParams
from latentfit.core.errors import DataError
from latentfit.core.fits import BASELINE
from latentfit.core.stats import Interval
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


def estimator_nll(images: pd.DataFrame, p: EvaluateParams) -> pd.DataFrame:
    """Per test image (the index), each estimator's NLL; NaN where it did not run (AIS, IWAE: the first images)."""
    test = images[images["split"] == "test"].set_index("image").sort_index()
    columns = {"ais": "ais", "iwae": f"iwae_{p.iwae_samples}", "prior_mc": f"prior_mc_{p.prior_mc_samples}"}
    return test[list(columns.values())].set_axis(list(columns), axis=1).assign(label=test["label"])


def _paired(fit: pd.DataFrame, base: pd.DataFrame, estimator: str) -> pd.DataFrame:
    """The images both fits scored by `estimator`, paired by image: a NaN in either drops that image from both."""
    return pd.concat([fit[estimator], base[estimator]], axis=1, keys=["fit", "base"], join="inner").dropna()


def _gap(both: pd.DataFrame) -> Interval:
    return interval((both["fit"] - both["base"]).to_numpy())


def _by_class(paired: Mapping[str, pd.DataFrame], labels: pd.Series) -> dict[str, ClassGap]:
    out = {}
    ais, iwae = paired["ais"], paired["iwae"]
    ais_labels, iwae_labels = labels.reindex(ais.index), labels.reindex(iwae.index)
    for c in sorted(set(ais_labels.tolist())):
        a, i = ais[ais_labels == c], iwae[iwae_labels == c]
        if len(a) > 1 and len(i) > 1:
            out[str(c)] = ClassGap(_gap(a), _gap(i))
    return out


def pair(fit: pd.DataFrame, base: pd.DataFrame, n: int) -> Pair:
    """One fit against the baseline, image by image: each estimator's paired gap on all the images both scored,
    and on the first n (the AIS images, where every estimator ran)."""
    paired = {est: _paired(fit, base, est) for est in ESTIMATORS}
    rows = {}
    for est, both in paired.items():
        first = both[both.index < n]
        gap = _gap(first)
        rows[est] = EstimatorRow(fit=float(first["fit"].mean()), baseline=float(first["base"].mean()), mean=gap.mean,
                                 se=gap.se, lo=gap.lo, hi=gap.hi, images=gap.images)
    return Pair(Gaps(**{est: _gap(both) for est, both in paired.items()}), Verdict(**rows),
                _by_class(paired, base["label"]))


def same_data(scores: Mapping[str, FitScores]) -> None:
    """Refuse to compare fits scored on different data (another dataset, preprocessing or test split)."""
    known = {name: s.data for name, s in scores.items() if s.data is not None}
    if not known:
        return
    first, identity = next(iter(known.items()))
    for name, other in known.items():
        if other != identity:
            raise DataError(f"{name} and {first} were scored on different data ({identity.differs(other)}): their "
                            "numbers do not pair. Re-run `dvc repro` so that every fit is evaluated on the same data")
    if len(known) < len(scores):
        missing = sorted(set(scores) - set(known))
        raise DataError(f"{', '.join(missing)} record no data identity (evaluated by an older release): re-run "
                        f"`dvc repro -f {' '.join(f'evaluate@{m}' for m in missing)}`")


def compare(scores: Mapping[str, FitScores], images: Mapping[str, pd.DataFrame], reference: Reference,
            p: EvaluateParams, baseline: str = BASELINE) -> Details:
    """Every fit's numbers and each fit's pair with the baseline (the first fit when the baseline is absent),
    after checking that every fit scored the same data."""
    same_data(scores)
    baseline = baseline if baseline in scores else next(iter(scores))
    nll = {name: estimator_nll(frame, p) for name, frame in images.items()}
    pairs = {name: pair(nll[name], nll[baseline], p.ais_images) for name in scores if name != baseline}
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
