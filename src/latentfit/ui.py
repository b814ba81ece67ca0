"""`latentfit ui`: the MLflow UI on the project's tracking store, opened on this project's runs table.

The store is the stages' own (`MLFLOW_TRACKING_URI`, else `mlflow.db` at the repository root); the
experiment is `tracking.experiment` of params.yaml, looked up by name. MLflow 3's UI opens an experiment
on its GenAI overview unless the address asks for the model-training view: the link does."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from latentfit.core.config import load_params
from latentfit.core.errors import Interrupted, LatentfitError, raise_interrupted
from latentfit.core.tracking import tracking_uri

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


READY_TIMEOUT = 300.0  # seconds `mlflow ui` may take to answer (35-90 s on a busy 2-core machine)


def serve(repo: Path, host: str, port: int) -> int:
    """Start `mlflow ui` on the store, print the link once it answers (a server store: just the link), and run
    until Ctrl-C or SIGTERM, which stop the server and every worker it started (the port is free after)."""
    url, uri = runs_url(repo, host, port)
    if uri.startswith(("http://", "https://")):
        print(f"runs of this project: {url}", flush=True)
        return 0
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    import psutil

    previous = signal.signal(signal.SIGTERM, raise_interrupted)
    server = subprocess.Popen(command, cwd=repo)
    # psutil's handle on the server, taken while it runs: it knows the process by its start time too, so it
    # never signals a pid the system reused once the server was reaped, and it still finds the workers
    tree = [psutil.Process(server.pid)]
    try:
        print(f"starting the MLflow UI on {uri} (it can take a minute) ...", flush=True)
        if not _answers(f"http://{host}:{port}/health", server):
            code = server.poll()
            raise LatentfitError(f"mlflow ui exited with {code} before answering on {host}:{port}: is the port "
                                 "taken? try --port" if code is not None else
                                 f"mlflow ui did not answer on {host}:{port} within {READY_TIMEOUT:.0f} s")
        tree += _children(tree[0])  # the workers, collected before anything waits on the server
        print(f"runs of this project: {url}  (Ctrl-C stops the server)", flush=True)
        return server.wait()
    except (KeyboardInterrupt, Interrupted) as err:  # exit as the stages do: 130 for Ctrl-C, 143 for SIGTERM
        return 128 + (err.signum if isinstance(err, Interrupted) else int(signal.SIGINT))
    finally:
        stopped = stop_tree(tree + _children(tree[0]))
        signal.signal(signal.SIGTERM, previous)
        if stopped:
            print(f"stopped the MLflow UI and its {stopped - 1} worker(s); port {port} is free", flush=True)


def _children(process: Any) -> list[Any]:
    """A live process's descendants (none once it is gone)."""
    import psutil

    try:
        return process.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _answers(url: str, server: subprocess.Popen) -> bool:
    """Poll `url` until it answers (True), the server exits or READY_TIMEOUT passes (False)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while server.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def stop_tree(procs: list[Any], timeout: float = 15.0) -> int:
    """Terminate the processes (psutil.Process handles: a server and its workers), then kill what is left after
    `timeout` seconds. Only processes still running are signalled: a handle whose process ended, or whose pid
    another process now holds, is skipped. Returns how many were running."""
    import psutil

    procs = list({p.pid: p for p in procs if p.is_running()}.values())
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return len(procs)
