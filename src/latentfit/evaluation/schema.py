"""The evaluate stage's numbers, one schema: what `metrics/evaluate_details.json` holds (nested by fit,
`vae.test.ais_nll`), the headline `dvc exp show` lists, and the helpers everything that reads them
shares (one interval, one verdict, one number format). The stage writes these types; the report, the
figures, the sweep summary and the tests read them back with `Details.from_dict`.

Numpy and scipy only: the sweep reads this without loading torch."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .why import Anatomy, Interval
from .why import interval as interval  # re-exported: the one interval every module uses

T = TypeVar("T")


def fmt(value: float | None, se: float | None = None, digits: int = 2) -> str:
    """A number as every table here prints it: `n/a` when missing, `± se` when given."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None and not math.isnan(se) else "")


def verdict(gap: Interval, over: str) -> tuple[str, str]:
    """Which fit is better by `gap` (direct - VAE, nats) and by how much, with its interval: (sentence,
    the fit that loses). `over` names what the interval runs over ("100 test images", "5 seeds")."""
    better, worse = ("VAE", "direct fit") if gap.mean > 0 else ("direct fit", "VAE")
    sign = 1 if gap.mean > 0 else -1  # the interval of the winner's advantage
    low, high = sorted((sign * gap.lo, sign * gap.hi))
    unsure = " (the interval includes 0: no clear winner)" if gap.lo <= 0 <= gap.hi and gap.images > 1 else ""
    spread = f"95% interval {low:.2f} to {high:.2f} over {over}" if gap.images > 1 else f"one value, over {over}"
    return f"the {better} is better by {abs(gap.mean):.2f} nats per image ({spread}){unsure}", worse


@dataclass(frozen=True)
class TestScores:
    """One fit's held-out likelihoods, nats per test image (lower is better)."""

    ais_nll: float
    ais_nll_se: float
    iwae_nll: float
    iwae_nll_se: float
    prior_mc_nll: float
    excess: float  # AIS NLL above the entropy floor of the same images
    neg_elbo: float | None = None  # the VAE's own bound and its terms
    rec: float | None = None
    kl: float | None = None
    iwae_nll_posthoc: float | None = None  # the VAE's decoder through a post-hoc encoder (the control)
    train_draws_nll: float | None = None  # the direct fit's objective with its own M training draws


@dataclass(frozen=True)
class Fit:
    test: TestScores


@dataclass(frozen=True)
class Gaps:
    """direct - VAE per image, paired: positive means the VAE's decoder is the better model."""

    ais: Interval
    iwae: Interval
    prior_mc: Interval


@dataclass(frozen=True)
class EstimatorRow:
    """One estimator on the verdict's images: both NLLs and their paired gap."""

    vae: float
    direct: float
    mean: float
    se: float
    lo: float
    hi: float
    images: int

    @property
    def gap(self) -> Interval:
        return Interval(self.mean, self.se, self.lo, self.hi, self.images)


@dataclass(frozen=True)
class Verdict:
    ais: EstimatorRow
    iwae: EstimatorRow
    prior_mc: EstimatorRow


@dataclass(frozen=True)
class Bdmc:
    upper_nll: float
    lower_nll: float
    gap: float  # bounds the AIS error at this schedule
    gap_se: float


@dataclass(frozen=True)
class BdmcPair:
    vae: Bdmc
    direct: Bdmc


@dataclass(frozen=True)
class DataTest:
    entropy_floor: float  # mean sum_j H(y_j): no Bernoulli model scores grayscale images below it


@dataclass(frozen=True)
class Data:
    test: DataTest


@dataclass(frozen=True)
class Denoise:
    flip_prob: float
    vae_bce: float
    direct_bce: float
    vae_mse: float
    direct_mse: float


def flip_key(prob: float) -> str:
    """A metric key without dots, so `dvc exp show` columns stay unambiguous: 0.02 -> 'flip_0_02'."""
    return "flip_" + f"{prob:g}".replace(".", "_")


@dataclass(frozen=True)
class Latent:
    knn_accuracy: float
    silhouette: float


@dataclass(frozen=True)
class LatentPair:
    vae: Latent
    direct: Latent


@dataclass(frozen=True)
class Fid:
    fid: float


@dataclass(frozen=True)
class Samples:
    classifier_accuracy: float
    data_fid: float  # real train vs real test: the floor
    vae: Fid
    direct: Fid


@dataclass(frozen=True)
class Details:
    """Every number of the evaluate stage: metrics/evaluate_details.json."""

    vae: Fit
    direct: Fit
    gap: Gaps
    verdict: Verdict
    bdmc: BdmcPair
    data: Data
    denoise: dict[str, Denoise]
    latent: LatentPair
    samples: Samples
    seconds: float
    anatomy: Anatomy | None = None

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Details:
        return _build(cls, data)

    def headline(self) -> dict[str, Any]:
        """metrics/evaluate.json, the columns `dvc exp show` lists: nested so they read `ais.gap`."""
        return {"ais": {"vae": self.vae.test.ais_nll, "direct": self.direct.test.ais_nll, "gap": self.gap.ais.mean},
                "iwae": {"vae": self.vae.test.iwae_nll, "direct": self.direct.test.iwae_nll,
                         "gap": self.gap.iwae.mean},
                "nelbo": {"vae": self.vae.test.neg_elbo},
                "prior": {"direct": self.direct.test.prior_mc_nll}}


# The numbers a sweep summarises over seeds: name -> (label, how to read it from Details).
SUMMARY: dict[str, tuple[str, Callable[[Details], float | None]]] = {
    "ais.gap": ("gap direct - VAE, AIS NLL", lambda d: d.gap.ais.mean),
    "iwae.gap": ("gap direct - VAE, IWAE NLL", lambda d: d.gap.iwae.mean),
    "ais.vae": ("AIS NLL, VAE", lambda d: d.vae.test.ais_nll),
    "ais.direct": ("AIS NLL, direct", lambda d: d.direct.test.ais_nll),
    "iwae.vae": ("IWAE NLL, VAE", lambda d: d.vae.test.iwae_nll),
    "iwae.direct": ("IWAE NLL, direct", lambda d: d.direct.test.iwae_nll),
    "prior.vae": ("prior-sampling NLL, VAE", lambda d: d.vae.test.prior_mc_nll),
    "prior.direct": ("prior-sampling NLL, direct", lambda d: d.direct.test.prior_mc_nll),
    "nelbo.vae": ("test -ELBO, VAE", lambda d: d.vae.test.neg_elbo),
    "knn.vae": ("kNN accuracy of latent means, VAE", lambda d: d.latent.vae.knn_accuracy),
    "knn.direct": ("kNN accuracy of latent means, direct", lambda d: d.latent.direct.knn_accuracy),
    "fd.vae": ("sample Frechet distance, VAE", lambda d: d.samples.vae.fid),
    "fd.direct": ("sample Frechet distance, direct", lambda d: d.samples.direct.fid),
}


def _drop_none(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in tree.items() if v is not None}


def _build(cls: type[T], data: Mapping[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{name: _value(hints[name], data[name]) for name in fields if name in data})


def _value(hint: Any, value: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # `X | None`: the value is an X
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value)  # type: ignore[arg-type]
    if typing.get_origin(hint) is dict:
        item = typing.get_args(hint)[1]
        return {key: _value(item, v) for key, v in value.items()}
    return value
