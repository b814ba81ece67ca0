"""What a fit is called and how it was fitted. The fits themselves are data: `fits:` in params.yaml (name ->
kind and training params, typed by core.config), which dvc.yaml iterates over (`train@<fit>`, the evaluation
blocks `<block>@<fit>`). Adding an entry there puts a fit in every stage, table, figure, report line, MLflow
run, registry name and sweep; nothing here lists the fits. No torch: the sweep and the report read it too."""

from __future__ import annotations

BASELINE = "vae"  # every gap is `fit - baseline`, per image: positive means the baseline's decoder is better
CHALLENGER = "direct"  # the gap the headline calls `ais.gap`; any other fit's is `ais.gap_<name>`
LABELS = {"vae": "VAE", "direct": "direct fit"}  # the notebook's two fits; any other is called by its name


def label(name: str) -> str:
    """What tables and figures call a fit."""
    return LABELS.get(name, name)


def baseline_of(names: list[str]) -> str:
    """The fit every other is compared with: the VAE when present, else the first listed."""
    return BASELINE if BASELINE in names else names[0]


def gap_key(name: str) -> str:
    """The headline key of `name - baseline`: `gap` for the challenger, `gap_<name>` for any other fit."""
    return "gap" if name == CHALLENGER else f"gap_{name}"


def registered_name(fit: str, part: str = "decoder") -> str:
    """The MLflow registry's name of a fit's decoder (or encoder): `latentfit-<fit>-decoder`."""
    return f"latentfit-{fit}-{part}"
