"""The fits the pipeline compares: one list, read by every stage, table and figure (nothing else names a
fit). A fit is a training stage that writes `models/<name>.pt`; adding one here and giving it a training
stage and an `evaluate@<name>` entry in dvc.yaml puts it in every table and figure. No torch here: the
sweep and the report read it too."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FitInfo:
    name: str  # the key in params, files, metrics and MLflow: `evaluate@vae`, `ais.vae`
    label: str  # what tables and figures call it
    method: str  # how it was fitted, for the report


FITS: tuple[FitInfo, ...] = (
    FitInfo("vae", "VAE", "ELBO (or IWAE bound) with an amortised Gaussian encoder"),
    FitInfo("direct", "direct fit", "Monte Carlo marginal likelihood with M prior draws"),
)
BASELINE = "vae"  # every gap is `fit - baseline`, per image: positive means the baseline's decoder is better
CHALLENGER = "direct"  # the gap the headline calls `ais.gap`; any other fit's is `ais.gap_<name>`


def names() -> list[str]:
    return [f.name for f in FITS]


def label(name: str) -> str:
    """A fit's label; a fit not in FITS (a test's third fit) is called by its name."""
    return next((f.label for f in FITS if f.name == name), name)


def gap_key(name: str) -> str:
    """The headline key of `name - baseline`: `gap` for the challenger, `gap_<name>` for any other fit."""
    return "gap" if name == CHALLENGER else f"gap_{name}"
