"""`latentfit ui`: the MLflow UI on the project's tracking store, opened on this project's runs table.

The store is the stages' own (`MLFLOW_TRACKING_URI`, else `mlflow.db` at the repository root); the
experiment is `tracking.experiment` of params.yaml, looked up by name. MLflow 3's UI opens an experiment
on its GenAI overview unless the address asks for the model-training view: the link does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .config import load_params
from .errors import LatentfitError
from .tracking import tracking_uri

VIEW = "workflowType=machine_learning"  # the runs table, not the traces overview (MLflow >= 3.15)


def find_project(start: Path) -> Path:
    """The repository root above `start`: the directory holding dvc.yaml and params.yaml."""
    for directory in (start, *start.parents):
        if (directory / "dvc.yaml").is_file() and (directory / "params.yaml").is_file():
            return directory
    raise LatentfitError(f"{start} is not inside the project: run latentfit ui where dvc.yaml and params.yaml are")


def runs_url(repo: Path, host: str = "127.0.0.1", port: int = 5000) -> tuple[str, str]:
    """The address of the project's runs table, and the store it reads. A tracking server is its own UI."""
    uri = tracking_uri(repo)
    name = load_params(repo / "params.yaml").tracking.experiment
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise LatentfitError(f"no tracking store at {uri} yet: run the pipeline first (`dvc repro`)")
    import mlflow

    try:
        experiment = mlflow.MlflowClient(uri).get_experiment_by_name(name)
    except Exception as err:  # noqa: BLE001 - any failure: the store cannot be read
        raise LatentfitError(f"the tracking store {uri} cannot be read ({str(err).splitlines()[0]}): start it, or "
                             "point MLFLOW_TRACKING_URI at one that runs") from None
    if experiment is None:
        raise LatentfitError(f"the tracking store {uri} has no experiment {name!r} (tracking.experiment in "
                             "params.yaml): run the pipeline first (`dvc repro`)")
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://{host}:{port}"
    return f"{base}/#/experiments/{experiment.experiment_id}?{VIEW}", uri


def serve(repo: Path, host: str, port: int) -> int:
    """Print the link, then run `mlflow ui` on the store until interrupted (a server store: just the link)."""
    url, uri = runs_url(repo, host, port)
    print(f"runs of this project: {url}", flush=True)
    if uri.startswith(("http://", "https://")):
        return 0
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    try:
        return subprocess.run(command, cwd=repo, check=False).returncode
    except KeyboardInterrupt:
        return 0
