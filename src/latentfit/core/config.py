"""Typed, validated parameters: the only module that reads params.yaml. `load_params()` turns the YAML into
frozen dataclasses once; every value is checked (type, range, allowed choices, unknown keys) before any stage
does work, and a bad value fails with its dotted key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from latentfit.core.errors import ParamsError

__all__ = ["KINDS", "THREADS_ENV", "DirectFitParams", "FitParams", "Params", "ParamsError", "VaeFitParams", "load_params",
           "parse_params", "thread_override", "to_flat_dict"]


def _check(**rules: Any) -> dict:
    """Field metadata: gt/ge/le bounds, `min_len` for lists, `item_ge`/`item_le` for list items."""
    return {"rules": rules}


@dataclass(frozen=True)
class DataParams:
    dataset: Literal["mnist", "fashion-mnist", "kmnist"] = "mnist"
    mirrors: tuple[str, ...] = ()
    timeout: float = field(default=30.0, metadata=_check(gt=0))
    verify: Literal["checksums", "shape"] = "checksums"  # shape: accept files the project has no checksum for


@dataclass(frozen=True)
class PreprocessParams:
    train_limit: int = field(default=0, metadata=_check(ge=0))  # 0 keeps every image
    test_limit: int = field(default=0, metadata=_check(ge=0))
    binarize: Literal["none", "static", "dynamic"] = "none"


@dataclass(frozen=True)
class ModelParams:
    z_dim: int = field(default=20, metadata=_check(ge=1))
    hidden: int = field(default=400, metadata=_check(ge=1))


@dataclass(frozen=True)
class VaeFitParams:
    """A fit of kind `vae`: encoder and decoder by the ELBO (iwae_k = 1) or Burda et al.'s IWAE bound."""

    kind: Literal["vae"] = "vae"
    epochs: int = field(default=40, metadata=_check(ge=1))
    batch_size: int = field(default=128, metadata=_check(ge=1))
    lr: float = field(default=1e-3, metadata=_check(gt=0))
    iwae_k: int = field(default=1, metadata=_check(ge=1))  # importance samples of the bound: 1 is the ELBO
    seed: int = 0


@dataclass(frozen=True)
class DirectFitParams:
    """A fit of kind `direct`: the decoder alone by the Monte Carlo marginal likelihood of M prior draws."""

    kind: Literal["direct"] = "direct"
    epochs: int = field(default=40, metadata=_check(ge=1))
    batch_size: int = field(default=256, metadata=_check(ge=1))
    lr: float = field(default=1e-3, metadata=_check(gt=0))
    mc_samples: int = field(default=64, metadata=_check(ge=1))
    fixed_samples: bool = True
    seed: int = 0


FitParams = VaeFitParams | DirectFitParams
KINDS: dict[str, type] = {"vae": VaeFitParams, "direct": DirectFitParams}
FIT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a stage key, a file name and a metric key: `ais.iwae8`
DEFAULT_FITS: dict[str, FitParams] = {"vae": VaeFitParams(), "direct": DirectFitParams()}


@dataclass(frozen=True)
class EvaluateParams:
    seed: int = 0
    batch_size: int = field(default=1000, metadata=_check(ge=1))
    prior_mc_samples: int = field(default=20000, metadata=_check(ge=1))
    prior_mc_curve: tuple[int, ...] = field(default=(64, 256, 1024, 4096, 20000), metadata=_check(item_ge=1))
    iwae_samples: int = field(default=1000, metadata=_check(ge=1))
    iwae_images: int = field(default=500, metadata=_check(ge=1))
    iwae_curve: tuple[int, ...] = field(default=(1, 10, 100), metadata=_check(item_ge=1))
    ais_images: int = field(default=100, metadata=_check(ge=1))
    ais_chains: int = field(default=8, metadata=_check(ge=1))
    ais_steps: int = field(default=300, metadata=_check(ge=1))
    ais_leapfrog: int = field(default=5, metadata=_check(ge=1))
    ais_beta_min: float = field(default=1e-5, metadata=_check(gt=0, le=1))
    ais_batch_size: int = field(default=100, metadata=_check(ge=1))
    ais_curve_steps: tuple[int, ...] = field(default=(10, 30, 100), metadata=_check(item_ge=1))
    ais_curve_images: int = field(default=25, metadata=_check(ge=1))
    bdmc_images: int = field(default=20, metadata=_check(ge=1))
    encoder_epochs: int = field(default=10, metadata=_check(ge=1))
    encoder_batch_size: int = field(default=128, metadata=_check(ge=1))
    encoder_lr: float = field(default=1e-3, metadata=_check(gt=0))
    search_candidates: int = field(default=20000, metadata=_check(ge=1))
    denoise_images: int = field(default=1000, metadata=_check(ge=1))
    flip_probs: tuple[float, ...] = field(
        default=(0.0, 0.01, 0.02, 0.05, 0.1), metadata=_check(min_len=1, item_ge=0, item_le=1)
    )
    knn_neighbours: int = field(default=5, metadata=_check(ge=1))
    silhouette_points: int = field(default=3000, metadata=_check(ge=10))
    classifier_epochs: int = field(default=3, metadata=_check(ge=1))
    classifier_lr: float = field(default=1e-3, metadata=_check(gt=0))
    classifier_batch_size: int = field(default=128, metadata=_check(ge=1))
    fid_samples: int = field(default=10000, metadata=_check(ge=10))
    anatomy: bool = True  # why one decoder wins: inference gaps, rate and distortion, importance-sampling checks
    gap_train_images: int = field(default=100, metadata=_check(ge=0))
    gap_steps: int = field(default=300, metadata=_check(ge=0))
    gap_samples: int = field(default=8, metadata=_check(ge=1))
    gap_lr: float = field(default=0.02, metadata=_check(gt=0))
    gap_full_covariance: bool = True
    gap_eval_samples: int = field(default=1000, metadata=_check(ge=1))


@dataclass(frozen=True)
class VisualizeParams:
    seed: int = 0
    n_show: int = field(default=8, metadata=_check(ge=1))
    search_candidates: int = field(default=20000, metadata=_check(ge=1))
    flip_prob: float = field(default=0.02, metadata=_check(ge=0, le=1))
    interp_from: int = field(default=6, metadata=_check(ge=0, le=9))
    interp_to: int = field(default=9, metadata=_check(ge=0, le=9))
    interp_steps: int = field(default=10, metadata=_check(ge=2))
    tsne_points: int = field(default=3000, metadata=_check(ge=10))
    tsne_perplexity: float = field(default=30.0, metadata=_check(gt=0))
    manifold_steps: int = field(default=20, metadata=_check(ge=2))  # z_dim = 2 only: the decoded grid
    manifold_span: float = field(default=3.0, metadata=_check(gt=0))


@dataclass(frozen=True)
class TrackingParams:
    experiment: str = "latentfit"
    required: bool = False


@dataclass(frozen=True)
class Params:
    data: DataParams = DataParams()
    preprocess: PreprocessParams = PreprocessParams()
    model: ModelParams = ModelParams()
    fits: dict[str, FitParams] = field(default_factory=lambda: dict(DEFAULT_FITS))
    evaluate: EvaluateParams = EvaluateParams()
    visualize: VisualizeParams = VisualizeParams()
    tracking: TrackingParams = TrackingParams()
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"

    def reading(self, keys: tuple[str, ...], stage: str) -> Params:
        """A view that lets `stage` read only `keys` (its dvc.yaml params, checked against its READS by
        `python -m latentfit.dag`): reading any other value fails at once."""
        return typing.cast(Params, _Reading(self, frozenset(keys), "", stage))


# Where results are logged, not what they are: reading it declares nothing (no stage re-runs for it).
UNDECLARED_OK = frozenset({"tracking"})


class _Reading:
    """A read-only view of a Params (or one of its sections) that admits the declared keys only."""

    def __init__(self, full: Any, keys: frozenset[str], prefix: str, stage: str):
        self._full, self._keys, self._prefix, self._stage = full, keys, prefix, stage

    def __getattr__(self, name: str) -> Any:
        return self._read(getattr(self._full, name), name)

    def __getitem__(self, name: str) -> Any:  # a mapping section: `params.fits["vae"]` with `fits.vae` declared
        return self._read(self._full[name], name)

    def _read(self, value: Any, name: str) -> Any:
        key = self._prefix + name
        parts = key.split(".")
        if any(".".join(parts[:i]) in self._keys for i in range(1, len(parts) + 1)) or parts[0] in UNDECLARED_OK:
            return value
        if any(k.startswith(key + ".") for k in self._keys):
            return _Reading(value, self._keys, key + ".", self._stage)
        script = self._stage.split("@")[0]
        raise ParamsError(f"stage {self._stage} reads {key} without declaring it: add '{key}' to READS in "
                          f"stages/{script}.py and to the stage's params in dvc.yaml "
                          f"(`python -m latentfit.dag` checks both), or DVC would not re-run it when {key} changes")


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run the stage from the repository root, where params.yaml lives")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from err
    return parse_params(raw)


THREADS_ENV = "LATENTFIT_THREADS"


def thread_override() -> int | None:
    """The CPU threads a stage must use: LATENTFIT_THREADS, else OMP_NUM_THREADS (Ray sets it to a task's CPUs);
    None: the stage takes its share. Not a param: how a result is computed, not what (nothing re-runs for it)."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        text = os.environ.get(name, "").strip()
        if not text:
            continue
        if not text.isdigit() or int(text) < 1:
            raise ParamsError(f"{name}={text!r} must be a whole number of threads >= 1; unset it to let each "
                              "stage take its share of the cores")
        return int(text)
    return None


def parse_params(raw: Any) -> Params:
    params = _build(Params, raw, "")
    _check_bounds(params)
    return params


def _check_bounds(params: Params) -> None:
    """Params that bound each other: a value read off a larger run must be within it."""
    e = params.evaluate
    within = [  # (key, values, bounding key, bound, what the values are)
        ("evaluate.prior_mc_curve", e.prior_mc_curve, "evaluate.prior_mc_samples", e.prior_mc_samples,
         "each M is read off the first M of the prior draws"),
        ("evaluate.iwae_curve", e.iwae_curve, "evaluate.iwae_samples", e.iwae_samples,
         "each k is read off the first k of the importance samples"),
        ("evaluate.ais_curve_steps", e.ais_curve_steps, "evaluate.ais_steps", e.ais_steps,
         "the convergence figure's schedules are shorter than the headline's"),
        ("evaluate.ais_curve_images", (e.ais_curve_images,), "evaluate.ais_images", e.ais_images,
         "the convergence figure's images are the first of the AIS images"),
        ("evaluate.ais_curve_images", (e.ais_curve_images,), "evaluate.iwae_images", e.iwae_images,
         "the convergence figure reads the IWAE estimates of its images off the IWAE images"),
    ]
    for key, values, bound_key, bound, why in within:
        over = [v for v in values if v > bound]
        if over:
            shown = over[0] if len(values) == 1 else list(values)
            raise ParamsError(f"{key} = {shown!r} exceeds {bound_key} = {bound}: {why}, so every value must be "
                              f"<= {bound}. Lower {key} or raise {bound_key}.")


def to_flat_dict(params: Any, prefix: str = "") -> dict[str, Any]:
    """`{"fits.vae.lr": 0.001, ...}`: the dotted names MLflow and `dvc exp show` use."""
    if isinstance(params, _Reading):  # the record is of every param, whatever the stage reads
        params = params._full
    items = params.items() if isinstance(params, dict) else ((f.name, getattr(params, f.name))
                                                              for f in dataclasses.fields(params))
    flat: dict[str, Any] = {}
    for key, value in items:
        name = prefix + key
        if dataclasses.is_dataclass(value) or isinstance(value, dict):
            flat.update(to_flat_dict(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def _build_fits(raw: Any, prefix: str) -> dict[str, FitParams]:
    """`fits:` name -> {kind, that kind's training params}: each fit is built by its kind's dataclass."""
    where = prefix.rstrip(".")
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"{where} must map each fit's name to its kind and training params, e.g. "
                          f"{where}: {{vae: {{kind: vae, epochs: 40}}, direct: {{kind: direct, mc_samples: 64}}}}")
    fits = {}
    for name, entry in raw.items():
        if not isinstance(name, str) or not FIT_NAME.match(name):
            raise ParamsError(f"{where}.{name}: a fit's name is a stage key, a file name and a metric key: use "
                              "lower-case letters, digits and '_', starting with a letter (e.g. iwae8)")
        if name.startswith("gap") or "_iwae_k" in name:  # `ais.gap_<fit>` and `train.<fit>_iwae_k<k>` are columns
            raise ParamsError(f"{where}.{name}: a fit's name may not start with 'gap' or contain '_iwae_k' (the "
                              "headline's gap columns and the IWAE bound's training column use them): rename it")
        kind = entry.get("kind") if isinstance(entry, dict) else None
        if kind not in KINDS:
            raise ParamsError(f"{where}.{name}.kind = {kind!r}: give every fit a kind, one of: {', '.join(KINDS)}")
        fits[name] = _build(KINDS[kind], entry, f"{prefix}{name}.")
    return fits


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "params.yaml"
    if not isinstance(raw, dict):
        raise ParamsError(f"{where} must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            raise ParamsError(
                f"unknown key '{prefix}{key}' in params.yaml.{hint} Allowed keys here: {', '.join(known)}"
            )
    values = {}
    for name, f in known.items():
        if name not in raw:
            continue  # the dataclass default applies
        hint = hints[name]
        if name == "fits" and cls is Params:
            values[name] = _build_fits(raw[name], f"{prefix}{name}.")
        elif dataclasses.is_dataclass(hint):
            values[name] = _build(typing.cast(type, hint), raw[name], f"{prefix}{name}.")
        else:
            values[name] = _coerce(raw[name], hint, prefix + name, f.metadata.get("rules", {}))
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str, rules: dict) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ParamsError(f"{key} = {value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if value is None:
            value = []
        if not isinstance(value, list):
            raise ParamsError(f"{key} = {value!r} must be a list of {item_type.__name__}")
        if len(value) < rules.get("min_len", 0):
            raise ParamsError(f"{key} must hold at least {rules['min_len']} item(s), got {value!r}")
        item_rules = {k[5:]: v for k, v in rules.items() if k.startswith("item_")}
        return tuple(_coerce(v, item_type, f"{key}[{i}]", item_rules) for i, v in enumerate(value))
    return _scalar(value, hint, key, rules)


def _scalar(value: Any, hint: type, key: str, rules: dict) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise ParamsError(f"{key} = {value!r} has the wrong type: expected {hint.__name__}")
    if hint is float:
        value = float(value)
        if not math.isfinite(value):
            raise ParamsError(f"{key} = {value!r} must be a finite number")
    bounds = {"gt": (lambda v, b: v > b, ">"), "ge": (lambda v, b: v >= b, ">="), "le": (lambda v, b: v <= b, "<=")}
    for rule, (test, sign) in bounds.items():
        if rule in rules and not test(value, rules[rule]):
            raise ParamsError(f"{key} = {value!r} is out of range: it must be {sign} {rules[rule]}")
    return value


