"""One fit's evaluation in-process, as DVC would run it: each part's compute (likelihood@<fit>'s and
figure_data@<fit>'s from their stage scripts, the anatomy's and structure's that evaluate@<fit> runs) on a
Block, its part written under `workdir/evaluation/<fit>/<part>/`, then merged as `evaluate@<fit>` does."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd

from latentfit.core.config import THREADS_ENV, Params
from latentfit.evaluation import structure
from latentfit.evaluation.anatomy import anatomy_part
from latentfit.evaluation.blocks import Block, part_dir, write_part
from latentfit.evaluation.merge import merge
from latentfit.evaluation.schema import FitScores
from latentfit.evaluation.structure import structure_part
from latentfit.model.files import FitModel

ROOT = Path(__file__).resolve().parents[1]
STAGED = ("likelihood", "figure_data")  # the parts whose stage is theirs alone (stages/<part>.py: compute)


def stage_module(block: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"stage_{block}", ROOT / "stages" / f"{block}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


STAGES = {block: stage_module(block) for block in STAGED}
COMPUTE = {"likelihood": STAGES["likelihood"].compute, "anatomy": anatomy_part, "structure": structure_part,
           "figure_data": STAGES["figure_data"].compute}  # each from its own streams: the order moves no number


@contextlib.contextmanager
def inside(path: Path) -> Iterator[None]:
    """In `path`, with a fixed thread count: the blocks resize torch's threads to their share of the cores, which
    other processes on the machine (another suite's stages) would change between two evaluations compared bit
    for bit."""
    before, threads = os.getcwd(), os.environ.get(THREADS_ENV)
    os.chdir(path)
    os.environ[THREADS_ENV] = "2"
    try:
        yield
    finally:
        os.chdir(before)
        if threads is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = threads


@dataclass
class Evaluated:
    scores: FitScores
    images: pd.DataFrame
    estimators: list[dict[str, Any]]
    rate_distortion: list[dict[str, Any]]
    arrays: dict[str, Any]
    encoder: Any  # the fit's own encoder, or its post-hoc one


def evaluate_fit(fit: FitModel, train: dict, test: dict, params: Params, workdir: Path, *, classifier: Any,
                 reference: Any, logged: list[str] | None = None) -> Evaluated:
    workdir.mkdir(parents=True, exist_ok=True)
    # the reference stage's classifier, given rather than read from models/classifier.pt
    with inside(workdir), mock.patch.object(structure, "load_classifier", lambda path, device: (classifier, reference)):
        block = Block(fit.name, fit, train, test, params)
        for name in COMPUTE:
            start, block.epochs = time.perf_counter(), []
            write_part(part_dir(fit.name, name), COMPUTE[name](block), time.perf_counter() - start,
                       {"device": "cpu", "device_name": "cpu", "torch": "test"}, block.epochs)
        merged = merge(Path("evaluation"), fit.name, "md5")
        if logged is not None:
            logged.extend(record["prefix"] for record in merged.epochs)
        with np.load(part_dir(fit.name, "figure_data") / "figures.npz") as arrays:
            figure_arrays = dict(arrays)
        return Evaluated(merged.scores, merged.images, merged.estimators.to_dict("records"),
                         merged.rate_distortion.to_dict("records"), figure_arrays, block.encoder())
