"""MLflow mirror of the DVC outputs: one run per stage execution, nested under one parent run per
pipeline execution (a DVC experiment, or a plain `dvc repro` of one commit and params).

The parent run (tag `stage = pipeline`) carries the params and every stage's final metrics, so
`mlflow ui` lists one row per experiment that expands into its stage runs. DVC files are the source
of truth: a tracking store that cannot be reached never loses a stage's outputs; the stage warns
once and goes on, unless `tracking.required` asks it to fail fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

from latentfit.core.errors import TrackingError

__all__ = ["StageRun", "TrackingError", "stage_run", "tracking_uri"]

T = TypeVar("T")


class TrackingWarning(UserWarning):
    """Tracking failed; the stage goes on and its DVC outputs are still written."""


def repo_root() -> Path:
    """The real repository: queued and --temp DVC experiments run in copies under .dvc/tmp/exps,
    and DVC_ROOT points back at it, so every run lands in the one store that `mlflow ui` shows."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the SQLite file mlflow.db at the repo root (`root`, or this run's)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


@contextlib.contextmanager
def tracking_env_kept() -> Iterator[None]:
    """Put MLFLOW_TRACKING_URI back as it was after the block: mlflow.set_tracking_uri exports it, and
    it must not outlive the block (it decides where the next stage, or a later run, logs)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


EXPERIMENT_KIND, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"


def use_experiment(name: str, artifacts: Path | None) -> str:
    """Select the experiment and return its id. A new one keeps its artifacts in `artifacts` when given:
    beside the default store, never in the temporary copy a queued experiment runs in."""
    import mlflow

    if artifacts is not None and mlflow.get_experiment_by_name(name) is None:
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # a parallel stage created it first
            mlflow.create_experiment(name, artifact_location=artifacts.as_uri())
    experiment = mlflow.set_experiment(name)
    if experiment.tags.get(EXPERIMENT_KIND) != MODEL_DEVELOPMENT:
        # MLflow 3's UI opens an experiment of unknown kind on its GenAI overview ("Traces 0"):
        # this tag makes it open on the runs table, one row per pipeline execution.
        mlflow.set_experiment_tag(EXPERIMENT_KIND, MODEL_DEVELOPMENT)
    return experiment.experiment_id


def pipeline_tags(stage: str, params: dict[str, Any]) -> dict[str, str]:
    """Tags that tie the runs of one pipeline execution together."""
    exp = os.environ.get("DVC_EXP_NAME", "")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    # Plain `dvc repro` sets no experiment name: the commit plus the params identify the execution.
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    tags = {"stage": stage, "dvc_exp": exp or "workspace", "git_commit": commit,
            "pipeline": exp or f"workspace-{commit[:8]}-{digest}",
            "dataset": str(params.get("data.dataset", ""))}
    return tags | caller_tags()


# Whoever starts a pipeline may tag its runs and nest its pipeline run under a run of its own (`latentfit
# sweep` does both): a JSON object of tags and a run id. What the tags mean lives with whoever sets them,
# so it is not code every stage runs.
RUN_TAGS_ENV, PARENT_RUN_ENV = "LATENTFIT_RUN_TAGS", "LATENTFIT_PARENT_RUN"


def caller_tags() -> dict[str, str]:
    try:
        tags = json.loads(os.environ.get(RUN_TAGS_ENV) or "{}")
    except json.JSONDecodeError:
        tags = None
    if not isinstance(tags, dict):
        warnings.warn(f"{RUN_TAGS_ENV} is not a JSON object of tags; its tags are left out", TrackingWarning,
                      stacklevel=2)
        return {}
    return {str(k): str(v) for k, v in tags.items()}


PARENT = "pipeline"  # the `stage` tag of a pipeline execution's parent run


class StageRun:
    """Thin wrapper over the active MLflow run; after the first failure it warns once and goes quiet."""

    def __init__(self, uri: str, active: bool, stage: str = ""):
        self.uri, self.active, self.stage = uri, active, stage
        self.parent_id: str | None = None
        self.quiet = False  # set once a failure has been reported

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """fn(*args, **kwargs) against this run's store, one writer at a time; None once tracking failed."""
        if not self.active:
            return None
        try:
            with store_lock(self.uri):
                return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never cost the stage its outputs
            self.active = False
            if self.quiet:
                return None
            self.quiet = True
            warnings.warn(f"MLflow logging to {self.uri} failed ({err}); the DVC outputs are still written. "
                          "Re-run the stage with `dvc repro -f <stage>` once the store is reachable.",
                          TrackingWarning, stacklevel=3)
            return None

    def log_epoch(self, record: dict[str, Any], prefix: str = "") -> None:
        import mlflow

        metrics = {prefix + k: float(v) for k, v in record.items() if k != "epoch"}
        self.call(mlflow.log_metrics, metrics, step=int(record["epoch"]))

    def log_metrics(self, metrics: dict[str, Any], prefix: str = "") -> None:
        """Final metrics, on the stage run and, prefixed by the stage, on the pipeline's parent run (a
        `foreach` stage's `evaluate@vae` as `evaluate.vae.`: MLflow's metric names have no `@`)."""
        import mlflow

        flat = {prefix + k: float(v) for k, v in flatten_numbers(metrics).items()}
        self.call(mlflow.log_metrics, flat)
        if self.parent_id:
            stage = self.stage.replace("@", ".")
            self.call(mlflow.log_metrics, {f"{stage}.{k}": v for k, v in flat.items()}, run_id=self.parent_id)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        self.call(mlflow.log_artifact, str(path), artifact_path)


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise writes to a SQLite store across processes (parallel queued experiments share one
    mlflow.db); SQLite allows one writer at a time and the first run also creates the tables."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path):  # an OS lock on every system (fcntl on POSIX, msvcrt on Windows)
        yield


@contextlib.contextmanager
def stage_run(stage: str, params: dict[str, Any], experiment: str = "latentfit",
              required: bool = False, tags: dict[str, str] | None = None) -> Iterator[StageRun]:
    """One MLflow run for one stage execution, with the params, the grouping tags and `tags` (where it ran).

    If the store cannot be reached the block still runs, untracked, after one warning; with
    `required` it raises TrackingError before any work is done.
    """
    default_store = "MLFLOW_TRACKING_URI" not in os.environ
    with tracking_env_kept(), _stage_run(stage, params, experiment, required, default_store, tags or {}) as run:
        yield run


@contextlib.contextmanager
def _stage_run(stage: str, params: dict[str, Any], experiment: str, required: bool,
               default_store: bool, extra_tags: dict[str, str]) -> Iterator[StageRun]:
    uri = tracking_uri()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    problem = _unreachable(uri)
    run = StageRun(uri, active=problem is None, stage=stage)
    if run.active:
        import mlflow

        tags = pipeline_tags(stage, params) | extra_tags

        def start() -> None:
            mlflow.set_tracking_uri(uri)
            artifacts = repo_root() / "mlartifacts" if default_store else None
            run.parent_id = _parent_run(use_experiment(experiment, artifacts), tags, params)
            mlflow.start_run(run_name=f"{tags['dvc_exp']}/{stage}", tags=tags, parent_run_id=run.parent_id)
            mlflow.log_params(loggable_params(params))

        try:
            with store_lock(uri):
                start()
        except Exception as err:  # noqa: BLE001 - a broken store is reported, not fatal by default
            problem, run.active = str(err).splitlines()[0], False
    if problem:
        message = f"MLflow tracking store {uri} is unreachable ({problem})."
        if required:
            raise TrackingError(message + " Start it, point MLFLOW_TRACKING_URI elsewhere, "
                                          "or set tracking.required: false to run without it.")
        warnings.warn(message + " The stage's DVC outputs are written without tracking; log them later "
                                f"with `dvc repro -f {stage}` once it is back.", TrackingWarning, stacklevel=3)
    if not run.active:
        yield run
        return
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        if not run.active:  # logging failed mid-stage: still close the run, quietly
            run.active, run.quiet = True, True
        run.call(mlflow.end_run, status)
        # the parent shows the state of the pipeline's latest stage: FAILED marks where it stopped
        run.call(mlflow.MlflowClient().set_terminated, run.parent_id, status)


def loggable_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in params.items()}


def _parent_run(experiment_id: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """The id of this pipeline execution's parent run, created by its first stage (under PARENT_RUN_ENV's
    run when the caller set it)."""
    import mlflow

    client = mlflow.MlflowClient()
    found = client.search_runs([experiment_id], f"tags.pipeline = '{tags['pipeline']}' and tags.stage = '{PARENT}'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    nest = {"mlflow.parentRunId": os.environ[PARENT_RUN_ENV]} if os.environ.get(PARENT_RUN_ENV) else {}
    parent = client.create_run(experiment_id, run_name=tags["pipeline"], tags=tags | {"stage": PARENT} | nest)
    mlflow.log_params(loggable_params(params), run_id=parent.info.run_id)
    return parent.info.run_id


def _unreachable(uri: str) -> str | None:
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5):
            return None
    except Exception as err:  # noqa: BLE001 - any failure means the server cannot take runs
        return str(getattr(err, "reason", err))


def flatten_numbers(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix + key] = value
    return flat
