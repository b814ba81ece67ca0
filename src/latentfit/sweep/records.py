"""What a landed run records, read from its experiment alone through one DVC file system at its ref: its comparison
(the final stage's numbers), the params it ran with (the experiment commit's params.yaml) and each per-fit stage's
time (the training history's per-epoch seconds, the evaluation parts' `part.json`, summed by the stage that computes them)."""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from latentfit.evaluation.merge import WRITTEN_BY
from latentfit.sweep.repo import git

# each part of a fit's evaluation with a part.json, and the per-fit stage that computes it: the scored ones and
# the figures'
PARTS = {**WRITTEN_BY, "figure_data": "figure_data"}
DETAILS = "metrics/comparison_details.json"  # the final stage's numbers, in every landed experiment


@dataclass(frozen=True)
class StageTime:
    """One per-fit stage's seconds as its run recorded them. A stage DVC restored from the run cache carries
    the record of the run that computed it: `digest` (of the record's bytes) tells them apart."""

    stage: str  # `train@direct`, `likelihood@vae`, ...
    seconds: float
    digest: str


@dataclass(frozen=True)
class RunRecords:
    params: dict[str, Any]
    times: list[StageTime] = field(default_factory=list)
    comparison: dict[str, Any] = field(default_factory=dict)  # its DETAILS ({} if it has none)

    def draws(self, fit: str) -> int | None:
        """M, the prior draws of a direct fit's objective (None for a fit of another kind)."""
        from latentfit.core.config import DirectFitParams

        entry = (self.params.get("fits") or {}).get(fit) or {}
        if entry.get("kind") != "direct":
            return None
        return int(entry.get("mc_samples", DirectFitParams.mc_samples))  # a params.yaml without it: the default

    def derived(self, rate: dict[str, float]) -> dict[str, tuple[str, float]]:
        """The study's columns of this run, name -> (label, value): per direct fit log M and its posterior rate
        minus log M (`rate` by fit, from the comparison), per fit its training time."""
        from latentfit.core.fits import label

        out: dict[str, tuple[str, float]] = {}
        for fit in self.params.get("fits") or {}:
            draws = self.draws(fit)
            if draws:
                out[f"log_m.{fit}"] = (f"log M, {label(fit)}", math.log(draws))
                if fit in rate:
                    out[f"rate_minus_log_m.{fit}"] = (f"posterior rate - log M, {label(fit)}", rate[fit] - math.log(draws))
        for t in self.times:
            stage, _, fit = t.stage.partition("@")
            if stage == "train":
                out[f"train_seconds.{fit}"] = (f"training time (s), {label(fit)}", t.seconds)
        return out


def read_records(repo: Path, rev: str) -> RunRecords:
    """The records of the experiment at git ref `rev`; a record it lacks is left out, not an error."""
    from dvc.api import DVCFileSystem

    params = yaml.safe_load(git(repo, "show", f"{rev}:params.yaml")) or {}
    fs = DVCFileSystem(str(repo), rev=rev)
    times = []
    for fit in params.get("fits") or {}:
        history = _read(fs, f"plots/train/{fit}.csv")
        if history is not None:
            import pandas as pd

            epochs = pd.read_csv(io.StringIO(history))
            if "seconds" in epochs:
                times.append(StageTime(f"train@{fit}", float(epochs["seconds"].sum()), _digest(history)))
        parts: dict[str, list[tuple[float, str]]] = {}  # stage -> its parts' (seconds, record)
        for part, stage in PARTS.items():
            text = _read(fs, f"evaluation/{fit}/{part}/part.json")
            seconds = json.loads(text).get("seconds") if text is not None else None
            if text is not None and seconds is not None:
                parts.setdefault(stage, []).append((float(seconds), text))
        times += [StageTime(f"{stage}@{fit}", sum(s for s, _ in done), _digest("".join(t for _, t in done)))
                  for stage, done in parts.items()]
    comparison = _read(fs, DETAILS)
    return RunRecords(params, times, json.loads(comparison) if comparison else {})


def _read(fs, path: str) -> str | None:
    try:
        return fs.read_text(path)
    except Exception:  # noqa: BLE001 - a run without the file (an older layout, a stage switched off)
        return None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_costs(records: dict[str, RunRecords]) -> list[dict[str, Any]]:
    """What the sweep's per-fit stages cost, by stage: how many distinct computations the runs hold (a stage
    restored from the run cache counts once), their total and mean seconds, and how many runs used them."""
    seen: dict[str, dict[str, float]] = {}
    used: dict[str, int] = {}
    for rec in records.values():
        for t in rec.times:
            seen.setdefault(t.stage, {})[t.digest] = t.seconds
            used[t.stage] = used.get(t.stage, 0) + 1
    rows = []
    for stage, computed in seen.items():
        total = sum(computed.values())
        rows.append({"stage": stage, "computed": len(computed), "runs": used[stage], "seconds": total,
                     "mean_seconds": total / len(computed)})
    return sorted(rows, key=lambda r: -r["seconds"])
