"""What a sweep is, fixed before its first run starts: the user's options and the plan they give."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from latentfit.core.errors import LatentfitError
from latentfit.core.io import write_json
from latentfit.sweep.grid import Run
from latentfit.sweep.worker import Transport


class SweepError(LatentfitError):
    """The sweep cannot start, or some of its runs failed."""


@dataclass
class Options:
    name: str
    sets: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    address: str | None = None       # a Ray cluster; None starts a local instance
    git_remote: str | None = None    # None: one machine, runs share this repository and its cache
    dvc_remote: str | None = None    # the DVC remote's name (default: the repository's default remote)
    cpus_per_run: float = 1.0
    gpus_per_run: float | None = None  # None: one GPU per run where the cluster has GPUs, else none
    max_retries: int = 2             # Ray re-runs a task whose worker or node died
    workdir: str | None = None       # where runs clone the repository (default: the node's temp dir)
    dry_run: bool = False



@dataclass
class Sweep:
    """Everything fixed before the first run starts."""

    repo: Path
    options: Options
    commit: str
    runs: list[Run]
    todo: list[Run]
    transport: Transport
    tracking_uri: str
    experiment: str
    remote: str | None = None  # remote mode: the DVC remote's name in this repository

    @property
    def out_dir(self) -> Path:
        return self.repo / "metrics" / "sweeps" / self.options.name

    @property
    def log_dir(self) -> Path:
        return self.repo / ".dvc" / "tmp" / "sweeps" / self.options.name

    @property
    def dvc_remote(self) -> str:
        """The DVC remote's name in this repository: remote mode only (on one machine runs share the cache)."""
        if self.remote is None:
            raise SweepError("this sweep's runs share this machine's DVC cache: it has no DVC remote")
        return self.remote

    def write_plan(self) -> None:
        write_json(self.out_dir / "plan.json", {
            "name": self.options.name, "commit": self.commit, "sets": self.options.sets, "seeds": self.options.seeds,
            "runs": [{"name": r.name, "point": dict(r.point), "seed": r.seed} for r in self.runs]})


@contextlib.contextmanager
def reported(what: str) -> Iterator[None]:
    """A block whose failure costs a record, not the sweep (DVC is the source of truth, MLflow mirrors
    it): report the failure on stderr as `warning: <what> (<first line>)` and go on after the block."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - any failure of a best-effort record is reported alike
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"warning: {what} ({first})", file=sys.stderr)
