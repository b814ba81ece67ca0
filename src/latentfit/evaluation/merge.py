"""`evaluate@<fit>`: one fit's results, merged from its evaluation blocks' parts (evaluation/blocks.py) into
the files the comparison, `latentfit compare` and the sweep read: metrics/fits/<fit>/scores.json (a
FitScores), images.csv (one row per image, every block's columns), estimators.csv, rate_distortion.csv.
Pandas and json only: nothing here runs a model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from latentfit.core.errors import DataError
from latentfit.evaluation.schema import FitScores, RanOn

# the parts whose numbers are the fit's scores, and the per-fit stage that writes each
WRITTEN_BY = {"likelihood": "likelihood", "anatomy": "evaluate", "structure": "evaluate"}
BLOCKS = tuple(WRITTEN_BY)
KEYS = ["split", "image", "label"]  # what identifies an image's row in every block's images.csv


@dataclass
class Merged:
    scores: FitScores
    images: pd.DataFrame
    estimators: pd.DataFrame
    rate_distortion: pd.DataFrame
    epochs: list[dict]  # the blocks' per-epoch records (the post-hoc encoder's), each with its MLflow prefix
    seconds: dict[str, float]  # each block's


def _part(root: Path, fit: str, block: str) -> dict:
    path = root / fit / block / "part.json"
    if not path.is_file():
        raise DataError(f"{path} is missing: run `dvc repro {WRITTEN_BY[block]}@{fit}` first")
    return json.loads(path.read_text())


def merge(root: Path, fit: str, model_md5: str, data: dict | None = None) -> Merged:
    """The fit's blocks under `root` (evaluation/), as one FitScores (with `data`, the identity of the data it
    scored) and its tables; images are joined by split, index and label, so a block's rows pair with the
    others' by image, never by position."""
    parts = {block: _part(root, fit, block) for block in BLOCKS}
    scores: dict = {"fit": fit, "model_md5": model_md5, "seconds": sum(p["seconds"] for p in parts.values()),
                    "data": data}
    for part in parts.values():
        scores |= part["scores"]
    ran_on = parts["likelihood"]["ran_on"]
    scores["own_encoder"] = scores["test"].get("neg_elbo") is not None
    scores["ran_on"] = {k: ran_on[k] for k in RanOn.__dataclass_fields__ if k in ran_on}
    images = pd.read_csv(root / fit / "likelihood" / "images.csv")
    anatomy = pd.read_csv(root / fit / "anatomy" / "images.csv")
    if len(anatomy.columns) > len(KEYS):  # its columns on the test images, and its rows of training images
        columns = list(images.columns) + [c for c in anatomy.columns if c not in images.columns]
        images = images.set_index(KEYS).combine_first(anatomy.set_index(KEYS)).reset_index()[columns]
    images = images.sort_values(["split", "image"], ascending=[False, True], ignore_index=True)  # test first
    return Merged(FitScores.from_dict(scores), images, pd.read_csv(root / fit / "likelihood" / "estimators.csv"),
                  pd.read_csv(root / fit / "anatomy" / "rate_distortion.csv"),
                  [e for part in parts.values() for e in part.get("epochs", [])],
                  {block: part["seconds"] for block, part in parts.items()})
