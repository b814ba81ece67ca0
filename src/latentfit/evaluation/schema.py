"""The evaluation's numbers, one schema: what each `evaluate@<fit>` stage writes for its fit
(`metrics/<fit>/scores.json`, a `FitScores`), what the reference stage writes for the data alone
(`metrics/reference.json`), and the comparison the final stage writes (`metrics/comparison_details.json`,
a `Details`: every fit's numbers keyed by name, and each fit's paired gaps to the baseline), with the
headline `dvc exp show` lists and the helpers everything that reads them shares (one interval, one
verdict, one number format). The report, the figures, the sweep summary and the tests read them back
with `from_dict`.

Numpy and scipy only: the sweep reads this without loading torch."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from latentfit.core.fits import BASELINE, CHALLENGER, gap_key, label
from latentfit.core.stats import Interval
from latentfit.core.stats import interval as interval  # re-exported: the one interval every module uses
from latentfit.evaluation.anatomy_records import ClassGap, DecoderAnatomy, Mixture
from latentfit.evaluation.metrics import METRICS

T = TypeVar("T")


def fmt(value: float | None, se: float | None = None, digits: int = 2) -> str:
    """A number as every table here prints it: `n/a` when missing, `± se` when given."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None and not math.isnan(se) else "")


def verdict(gap: Interval, over: str, fit: str = CHALLENGER, baseline: str = BASELINE) -> tuple[str, str]:
    """Which fit is better by `gap` (fit - baseline, nats) and by how much, with its interval: (sentence,
    the fit that loses). `over` names what the interval runs over ("100 test images", "5 seeds")."""
    better, worse = (label(baseline), label(fit)) if gap.mean > 0 else (label(fit), label(baseline))
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
    iwae_nll: float  # through the fit's own encoder, or a post-hoc one for a fit without
    iwae_nll_se: float
    prior_mc_nll: float
    excess: float  # AIS NLL above the entropy floor of the same images
    neg_elbo: float | None = None  # a fit with its own encoder: its bound and its terms
    rec: float | None = None
    kl: float | None = None
    iwae_nll_posthoc: float | None = None  # a fit with its own encoder, through a post-hoc one (the control)
    train_draws_nll: float | None = None  # a fit that kept its M training draws: its objective with them


@dataclass(frozen=True)
class Bdmc:
    upper_nll: float
    lower_nll: float
    gap: float  # bounds the AIS error at this schedule
    gap_se: float


@dataclass(frozen=True)
class Denoise:
    flip_prob: float
    bce: float  # of the reconstruction against the clean image, nats per image
    mse: float  # per pixel


def flip_key(prob: float) -> str:
    """A metric key without dots, so `dvc exp show` columns stay unambiguous: 0.02 -> 'flip_0_02'."""
    return "flip_" + f"{prob:g}".replace(".", "_")


@dataclass(frozen=True)
class Latent:
    knn_accuracy: float
    silhouette: float


@dataclass(frozen=True)
class RanOn:
    """Where a fit's evaluate stage ran: CPU and CUDA draw different numbers from one seed."""

    device: str  # cpu | cuda | mps (resolved, never `auto`)
    device_name: str
    torch: str
    trained_on: str = ""  # the device of the fit's training stage


@dataclass(frozen=True)
class DataIdentity:
    """The data a fit was scored on (the preprocess stage's data/prepared/identity.json): results pair only when
    every field is equal, the SHA-256 of the test split's pixels and labels above all."""

    dataset: str
    binarize: str
    train_limit: int
    test_limit: int
    train_images: int
    test_images: int
    train_sha256: str
    test_sha256: str

    def differs(self, other: DataIdentity) -> str:
        """What two identities disagree on (empty when they are the same data)."""
        return differences(dataclasses.asdict(self), dataclasses.asdict(other))


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """The keys on which two records (data identities, as written) disagree: `key a vs b`, comma-separated."""
    return ", ".join(f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k))


@dataclass(frozen=True)
class FitScores:
    """Every number of one fit's evaluate stage: metrics/<fit>/scores.json."""

    fit: str
    own_encoder: bool  # reconstructs through its own encoder (else: searches prior draws)
    model_md5: str  # the model file it measured (the registry finds its version by it)
    test: TestScores
    bdmc: Bdmc
    denoise: dict[str, Denoise]
    latent: Latent
    sample_fd: float  # Frechet distance of prior samples to test images, in the reference classifier's features
    seconds: float
    anatomy: DecoderAnatomy | None = None  # off with evaluate.anatomy: false
    mixture: Mixture | None = None  # a fit that kept its M training draws
    ran_on: RanOn | None = None
    data: DataIdentity | None = None  # what it scored (None: written before data identities were recorded)

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitScores:
        return _build(cls, data)


@dataclass(frozen=True)
class Reference:
    """What the data alone score (the reference stage): metrics/reference.json."""

    entropy_floor: float  # mean sum_j H(y_j) over the test images: no Bernoulli model scores them below it
    classifier_accuracy: float  # the feature classifier of the Frechet distance, on the test images
    data_fd: float  # Frechet distance real train vs real test: the floor of sample_fd

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reference:
        return _build(cls, data)


@dataclass(frozen=True)
class Gaps:
    """fit - baseline per image, paired: positive means the baseline's decoder is the better model."""

    ais: Interval
    iwae: Interval
    prior_mc: Interval


@dataclass(frozen=True)
class EstimatorRow:
    """One estimator on the verdict's images (the AIS images): both NLLs and their paired gap."""

    fit: float
    baseline: float
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
class Pair:
    """One fit against the baseline, paired on the same images."""

    gap: Gaps  # each estimator on all its images
    verdict: Verdict  # each estimator on the AIS images
    by_class: dict[str, ClassGap]


ESTIMATORS = ("ais", "iwae", "prior_mc")


@dataclass(frozen=True)
class Details:
    """The comparison: every fit's numbers by name, the data's, and each fit against the baseline."""

    baseline: str
    fits: dict[str, FitScores]
    reference: Reference
    pairs: dict[str, Pair]  # by fit, every fit but the baseline

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Details:
        return _build(cls, data)

    @property
    def challenger(self) -> str:
        """The fit the headline's `gap` and the report's first sentence are about."""
        return CHALLENGER if CHALLENGER in self.pairs else next(iter(self.pairs))

    def headline(self) -> dict[str, Any]:
        """metrics/comparison.json, the columns `dvc exp show` lists: nested so they read `ais.gap`. Every fit's
        METRICS marked for the headline, each fit's paired AIS and IWAE gap to the baseline, and the device."""
        out: dict[str, Any] = {m.key: {} for m in METRICS if m.headline}
        devices = sorted({d for f in self.fits.values() if f.ran_on for d in (f.ran_on.device, f.ran_on.trained_on) if d})
        for name, f in self.fits.items():
            for m in METRICS:
                if m.headline and m.headline(f) and (value := m.read(f)) is not None:
                    out[m.key][name] = value
        for name, pair in self.pairs.items():
            out["ais"][gap_key(name)], out["iwae"][gap_key(name)] = pair.gap.ais.mean, pair.gap.iwae.mean
        if devices:  # where every fit was trained and evaluated: one column, `cpu` (CPU and CUDA draw differently)
            out["device"] = "+".join(devices)
        return {k: v for k, v in out.items() if v}


def walk(d: Details) -> list[tuple[str, float]]:
    """From the challenger's training objective (its M fixed draws) to the baseline's AIS NLL and back up to
    the baseline's own bound, on the verdict's test images: (label, NLL) stops. Empty without an anatomy."""
    fit, base = d.challenger, d.fits[d.baseline]
    if base.anatomy is None:
        return []
    rows, mixture, b = d.pairs[fit].verdict, d.fits[fit].mixture, base.anatomy.test
    stops = [(f"{label(fit)}: its training objective (its M fixed draws)",
              mixture.test_objective_nll if mixture is not None else None),
             (f"{label(fit)}: prior sampling (fresh draws)", rows.prior_mc.fit),
             (f"{label(fit)}: AIS NLL", rows.ais.fit),
             (f"{label(d.baseline)}: AIS NLL", b.ais),
             (f"{label(d.baseline)}: best full-covariance Gaussian -ELBO", b.optimised_full),
             (f"{label(d.baseline)}: best diagonal Gaussian -ELBO", b.optimised),
             (f"{label(d.baseline)}: its encoder's -ELBO", b.amortised)]
    return [(text, value) for text, value in stops if value is not None]


Read = Callable[["Details"], "float | None"]


def _gap_reader(name: str, estimator: str) -> Read:
    return lambda d: getattr(d.pairs[name].gap, estimator).mean if name in d.pairs else None


def _fit_reader(name: str, read: Callable[[FitScores], float | None]) -> Read:
    return lambda d: read(d.fits[name]) if name in d.fits else None


def summary_metrics(details: Details) -> dict[str, tuple[str, Read]]:
    """The numbers a sweep summarises over seeds: name (as `dvc exp show` spells it) -> (label, reader)."""
    out: dict[str, tuple[str, Read]] = {}
    for name in details.pairs:
        for key, what in (("ais", "AIS NLL"), ("iwae", "IWAE NLL")):
            out[f"{key}.{gap_key(name)}"] = (f"gap {label(name)} - {label(details.baseline)}, {what}",
                                             _gap_reader(name, key))
    for m in METRICS:
        for name, fit in details.fits.items():
            if m.sweep and m.read(fit) is not None:
                out[f"{m.key}.{name}"] = (f"{m.label.split(' (')[0]}, {label(name)}", _fit_reader(name, m.read))
    return out


def _drop_none(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in tree.items() if v is not None}


def _build(cls: type[T], data: Mapping[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{name: _value(hints[name], data[name]) for name in fields if name in data})


def _value(hint: Any, value: Any) -> Any:
    if value is None:  # an optional record left out
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # `X | None`: the value is an X
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value)  # type: ignore[arg-type]
    if typing.get_origin(hint) is dict:
        item = typing.get_args(hint)[1]
        return {key: _value(item, v) for key, v in value.items()}
    return value
