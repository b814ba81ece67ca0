"""One fit's evaluation in-process, as DVC would run it: each block stage's `compute` (stages/<block>.py) on a
Block, its part written under `workdir/evaluation/<fit>/<block>/`, then merged as `evaluate@<fit>` does."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latentfit.core.config import THREADS_ENV, Params
from latentfit.evaluation.blocks import Block, part_dir, write_part
from latentfit.evaluation.merge import merge
from latentfit.evaluation.schema import FitScores
from latentfit.model.files import FitModel

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = ("likelihood", "anatomy", "structure", "figure_data")  # in the order DVC runs them


def stage_module(block: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"stage_{block}", ROOT / "stages" / f"{block}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


STAGES = {block: stage_module(block) for block in BLOCKS}
COMPUTE = {block: module.compute for block, module in STAGES.items()}


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
    STAGES["structure"].load_classifier = lambda path, device: (classifier, reference)  # the reference stage's
    with inside(workdir):
        block = Block(fit.name, fit, train, test, params)
        for name in BLOCKS:
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
