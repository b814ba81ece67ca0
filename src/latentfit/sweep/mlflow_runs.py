"""The sweep in MLflow: one run for the sweep, every pipeline run nested under it and tagged with its
grid point and seed (through the stages' generic caller-tags contract), and a pipeline run for a landed
run whose every stage DVC restored from its cache (no stage ran, so none logged)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import yaml

from latentfit.core.config import parse_params, to_flat_dict
from latentfit.core.tracking import (
    PARENT,
    PARENT_RUN_ENV,
    RUN_TAGS_ENV,
    flatten_numbers,
    loggable_params,
    store_lock,
    tracking_env_kept,
    tracking_uri,
    use_experiment,
)
from latentfit.sweep.grid import Run
from latentfit.sweep.repo import exp_ref, git, read_json
from latentfit.sweep.spec import Sweep, reported


@contextlib.contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `uri` for a block, leaving MLFLOW_TRACKING_URI as it was."""
    import mlflow

    with tracking_env_kept():
        mlflow.set_tracking_uri(uri)
        yield


def sweep_parent(sweep: Sweep) -> str | None:
    """The sweep's MLflow run (found again when the same sweep is re-run), with its plan as params."""
    import mlflow

    with reported(f"MLflow store {sweep.tracking_uri} cannot take the sweep's run; the experiments still land in DVC"):
        local = sweep.tracking_uri.startswith("sqlite:///") and "MLFLOW_TRACKING_URI" not in os.environ
        with store_lock(sweep.tracking_uri), _tracking(sweep.tracking_uri):
            exp_id = use_experiment(sweep.experiment, sweep.repo / "mlartifacts" if local else None)
            client = mlflow.MlflowClient()
            query = f"tags.sweep = '{sweep.options.name}' and tags.stage = 'sweep' and tags.git_commit = '{sweep.commit}'"
            found = client.search_runs([exp_id], query, max_results=1)
            if found:
                return found[0].info.run_id
            run = client.create_run(exp_id, run_name=f"sweep {sweep.options.name}", tags={
                "stage": "sweep", "sweep": sweep.options.name, "git_commit": sweep.commit,
                "mlflow.note.content": f"latentfit sweep {' '.join('-S ' + s for s in sweep.options.sets)} "
                                       f"--seeds {','.join(map(str, sweep.options.seeds))}"})
            for key, value in {"sets": " ".join(sweep.options.sets) or "none",
                               "seeds": ",".join(map(str, sweep.options.seeds)), "runs": len(sweep.runs)}.items():
                client.log_param(run.info.run_id, key, value)
            return run.info.run_id
    return None


def find_parent(repo: Path, name: str) -> tuple[str | None, str]:
    """The MLflow run of an earlier sweep `name`, if the store has one, and the store's URI."""
    uri = tracking_uri(repo)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None, uri
    try:
        import mlflow

        with _tracking(uri):
            found = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1,
                                       filter_string=f"tags.sweep = '{name}' and tags.stage = 'sweep'")
        return (found[0].info.run_id if found else None), uri
    except Exception:  # noqa: BLE001 - the summary files do not need the store
        return None, uri


def record_restored(sweep: Sweep, parent: str | None, name: str) -> None:
    """Give a landed run that executed no stage (every output came from DVC's cache, so no stage logged
    to MLflow) its pipeline run under the sweep, with the params and metrics of its experiment."""
    if parent is None:
        return

    import mlflow

    with reported(f"could not record {name} in MLflow"), store_lock(sweep.tracking_uri):
        client = mlflow.MlflowClient(sweep.tracking_uri)
        exp_id = client.get_run(parent).info.experiment_id
        query = f"tags.dvc_exp = '{name}' and tags.stage = '{PARENT}' and tags.sweep = '{sweep.options.name}'"
        if client.search_runs([exp_id], query, max_results=1):
            return
        ref = exp_ref(sweep.commit, name)
        run = next(r for r in sweep.runs if r.name == name)
        tags = {"stage": PARENT, "dvc_exp": name, "pipeline": name, "git_commit": sweep.commit,
                "sweep": sweep.options.name, "sweep_point": run.point_label, "sweep_seed": str(run.seed),
                "mlflow.parentRunId": parent, "restored": "true",
                "mlflow.note.content": "No stage ran: DVC restored every output from its cache. The params and "
                                       "metrics are those of the experiment's commit."}
        created = client.create_run(exp_id, run_name=name, tags=tags)
        params = yaml.safe_load(git(sweep.repo, "show", f"{ref}:params.yaml")) or {}
        for key, value in loggable_params(to_flat_dict(parse_params(params))).items():
            client.log_param(created.info.run_id, key, value)
        fits = list(params.get("fits") or {})
        for stage, path in ([(f"train.{fit}", f"metrics/train/{fit}.json") for fit in fits]
                            + [("visualize", "metrics/comparison_details.json")]):
            for key, value in flatten_numbers(read_json(sweep.repo, ref, path)).items():
                client.log_metric(created.info.run_id, f"{stage}.{key}", float(value))
        client.set_terminated(created.info.run_id, "FINISHED")


def run_env(sweep: Sweep, run: Run, parent: str | None) -> dict[str, str]:
    tags = {"sweep": sweep.options.name, "sweep_point": run.point_label, "sweep_seed": str(run.seed)}
    env = {"MLFLOW_TRACKING_URI": sweep.tracking_uri, RUN_TAGS_ENV: json.dumps(tags)}
    return env | ({PARENT_RUN_ENV: parent} if parent else {})
