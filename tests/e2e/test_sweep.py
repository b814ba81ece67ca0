"""`latentfit sweep` for real: Ray tasks running the pipeline with `dvc exp run` in clones, on a local Ray
instance and on a two-node Ray cluster (ray.cluster_utils.Cluster, two machines simulated on this one)
that exchanges experiments through a bare git repository and a local-directory DVC remote."""

import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dvc.api
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from latentfit.sweep.driver import Options, SweepError, sweep
from latentfit.sweep.repo import exp_ref, landed
from tests.e2e.helpers import SMALL, Repo, new_repo

pytestmark = [pytest.mark.e2e, pytest.mark.sweep]
TINY = {**SMALL, "preprocess": {"train_limit": 300, "test_limit": 100},
        "fits": {"vae": {"kind": "vae", "epochs": 1, "batch_size": 64},
                 "direct": {"kind": "direct", "epochs": 1, "batch_size": 64}}}


@pytest.fixture(scope="module")
def base(tmp_path_factory, synthetic_dir):
    """A committed repository after one `dvc repro` on tiny data (a local directory as its mirror)."""
    repo = new_repo(tmp_path_factory.mktemp("sweep"))
    repo.set_params(data={"mirrors": [str(synthetic_dir)], "verify": "shape"}, **TINY)
    repo.commit("pipeline")
    repo.dvc("repro")
    repo.commit("repro")
    return repo.path


@pytest.fixture
def repo(base, tmp_path, monkeypatch):
    """A copy of the base for one test, as the current directory, with the environment a user's shell has."""
    path = tmp_path / "repo"
    shutil.copytree(base, path, symlinks=True)
    user = Repo(path)
    for key in list(os.environ):
        if key.startswith(("DVC_", "MLFLOW_", "LATENTFIT_")):
            monkeypatch.delenv(key)
    for key, value in user.env.items():
        if key.startswith(("GIT_", "PYTHONPATH", "PATH")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.chdir(path)
    yield user
    import ray

    ray.shutdown()


def exp_show(repo: Repo) -> dict[str, dict]:
    """name -> {"params": flat, "metrics": flat} of every experiment of HEAD, read from `dvc exp show --json`."""
    rows = json.loads(repo.dvc("exp", "show", "--json"))
    found = {}
    for commit in rows:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev.get("data") or {}
                flat = {}
                for kind in ("params", "metrics"):
                    values = {}
                    for content in (data.get(kind) or {}).values():
                        values |= _flatten(content.get("data") or {})
                    flat[kind] = values
                found[rev["name"]] = flat
    return found


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def sweep_runs(repo: Repo, name: str) -> tuple[object, list]:
    mlflow.set_tracking_uri(f"sqlite:///{repo.path / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parent = [r for r in runs if r.data.tags.get("stage") == "sweep" and r.data.tags.get("sweep") == name]
    assert len(parent) == 1, "one MLflow run for the sweep"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    return parent[0], children


def test_a_local_sweep_lands_every_run_in_dvc_and_mlflow_with_seed_statistics(repo, capsys):
    options = Options(name="lr", sets=["fits.vae.lr=0.001,0.003"], seeds=[0, 1])
    outcomes = sweep(options, progress=False)
    names = ["lr-lr=0.001-seed=0", "lr-lr=0.001-seed=1", "lr-lr=0.003-seed=0", "lr-lr=0.003-seed=1"]
    assert sorted(o.name for o in outcomes) == names and all(o.ok for o in outcomes)

    # dvc exp show lists every run, with its params and metrics
    shown = exp_show(repo)
    assert set(names) <= set(shown)
    for name in names:
        lr, seed = re.match(r"lr-lr=([\d.]+)-seed=(\d)", name).groups()
        assert shown[name]["params"]["fits.vae.lr"] == float(lr)
        assert shown[name]["params"]["fits.vae.seed"] == shown[name]["params"]["evaluate.seed"] == int(seed)
        assert np.isfinite(shown[name]["metrics"]["ais.gap"])

    # a stage another run computed came from the run cache: train@direct does not depend on fits.vae.lr
    logs = {n: (repo.path / ".dvc/tmp/sweeps/lr" / f"{n}.log").read_text() for n in names}
    assert sum("Stage 'train@direct' is cached" in log for log in logs.values()) >= 1, "train@direct re-ran everywhere"

    # one MLflow sweep run over 4 pipeline runs, tagged with the grid point and the seed
    parent, children = sweep_runs(repo, "lr")
    assert sorted(c.data.tags["dvc_exp"] for c in children) == names
    assert {(c.data.tags["sweep_point"], c.data.tags["sweep_seed"]) for c in children} == {
        (f"fits.vae.lr={lr}", s) for lr in ("0.001", "0.003") for s in ("0", "1")}
    assert "summary" in {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}

    # the summary equals a computation from the experiments' own metrics
    summary = pd.read_csv(repo.path / "metrics/sweeps/lr/summary.csv")
    for lr in ("0.001", "0.003"):
        for metric in ("ais.gap", "iwae.gap", "ais.vae", "iwae.direct", "nelbo.vae", "prior.direct"):
            values = [shown[f"lr-lr={lr}-seed={s}"]["metrics"][metric] for s in (0, 1)]
            row = summary[(summary.point == f"fits.vae.lr={lr}") & (summary.metric == metric)].iloc[0]
            lo, hi = stats.t.interval(0.95, 1, loc=np.mean(values), scale=stats.sem(values))
            assert (row["mean"], row["sd"]) == (pytest.approx(np.mean(values)), pytest.approx(np.std(values, ddof=1)))
            assert (row["lo"], row["hi"]) == (pytest.approx(lo), pytest.approx(hi))
        gaps = [shown[f"lr-lr={lr}-seed={s}"]["metrics"]["iwae.direct"] - shown[f"lr-lr={lr}-seed={s}"]["metrics"]["iwae.vae"]
                for s in (0, 1)]
        row = summary[(summary.point == f"fits.vae.lr={lr}") & (summary.metric == "iwae.gap")].iloc[0]
        assert row["mean"] == pytest.approx(np.mean(gaps), abs=1e-3), "the gap is paired per seed"
    md = (repo.path / "metrics/sweeps/lr/summary.md").read_text()
    assert "## fits.vae.lr=0.003 (seeds 0, 1)" in md and "is better by" in md
    assert (repo.path / "metrics/sweeps/lr/summary.png").stat().st_size > 10_000

    # the study's columns come from each experiment's own params and records
    per_run = pd.read_csv(repo.path / "metrics/sweeps/lr/runs.csv").set_index("run")
    draws = yaml.safe_load((repo.path / "params.yaml").read_text())["fits"]["direct"].get("mc_samples", 64)
    head = repo.run("git", "rev-parse", "HEAD").strip()
    for name in names:
        history = pd.read_csv(io.StringIO(dvc.api.read("plots/train/direct.csv", repo=str(repo.path),
                                                       rev=exp_ref(head, name))))
        row = per_run.loc[name]
        assert row["log_m.direct"] == pytest.approx(math.log(draws))
        assert row["rate_minus_log_m.direct"] == pytest.approx(row["rate.direct"] - row["log_m.direct"])
        assert row["train_seconds.direct"] == pytest.approx(history["seconds"].sum())
    assert "## When does the direct fit work?" in md and "## What it cost" in md
    assert "| train@direct " in md and "| likelihood@vae " in md
    assert (repo.path / "metrics/sweeps/lr/gap_vs_log_m.png").stat().st_size > 10_000

    # the same command again runs nothing, and `latentfit sweep summary` writes the same numbers
    capsys.readouterr()
    assert sweep(options, progress=False) == []
    assert "4 already landed, 0 to run" in capsys.readouterr().out
    assert len(sweep_runs(repo, "lr")[1]) == 4
    before = (repo.path / "metrics/sweeps/lr/summary.csv").read_text()
    done = subprocess.run([str(Path(sys.executable).parent / "latentfit"), "sweep", "summary", "lr"], cwd=repo.path,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (repo.path / "metrics/sweeps/lr/summary.csv").read_text() == before


def test_a_diverging_grid_point_fails_alone_and_is_named(repo):
    with pytest.raises(SweepError) as failed:
        sweep(Options(name="div", sets=["fits.vae.lr=0.001,1000000"]), progress=True)  # the bar too
    assert "1 of 2 run(s) failed: div-lr=1000000-seed=0" in str(failed.value)
    head = repo.run("git", "rev-parse", "HEAD").strip()
    assert landed(repo.path, head) == {"div-lr=0.001-seed=0"}, "the good point landed, the bad one did not"
    log = (repo.path / ".dvc/tmp/sweeps/div/div-lr=1000000-seed=0.log").read_text()
    assert "diverged" in log and "lower fits.vae.lr" in log


def test_the_cli_refuses_a_bad_key_before_anything_runs(repo):
    latentfit = str(Path(sys.executable).parent / "latentfit")
    done = subprocess.run([latentfit, "sweep", "-S", "model.zdim=2,5", "--name", "bad"], cwd=repo.path,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "model.zdim" in done.stderr and "no key 'zdim'" in done.stderr and "Traceback" not in done.stderr
    assert not (repo.path / ".dvc/tmp/sweeps/bad").exists()
    dry = subprocess.run([latentfit, "sweep", "-S", "model.z_dim=2,5", "--seeds", "0-1", "--name", "z", "--dry-run"],
                         cwd=repo.path, capture_output=True, text=True, check=True)
    assert "4 run(s)" in dry.stdout and "z-z_dim=5-seed=1" in dry.stdout


def test_a_killed_worker_is_retried_and_its_run_lands_once(repo, tmp_path):
    """SIGKILL the Ray worker in the middle of its pipeline: Ray runs the task again in a new worker and a
    fresh clone; the experiment lands once, from the second attempt, and the first attempt leaves nothing."""
    options = Options(name="kill", sets=["fits.vae.lr=0.002"], max_retries=1, workdir=str(tmp_path / "work"))
    (tmp_path / "work").mkdir()
    log = repo.path / ".dvc/tmp/sweeps/kill/kill-seed=0.log"
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(outcomes=sweep(options, progress=False)))
    thread.start()
    deadline = time.time() + 300
    while time.time() < deadline and "Running stage 'train@vae'" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    pid = int(re.search(r"\(pid (\d+)\)", log.read_text()).group(1))
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive()
    [outcome] = result["outcomes"]
    assert outcome.ok
    text = log.read_text()
    assert text.count("=== kill-seed=0 on") == 2, "two attempts, the second in a new worker"
    assert text.count("=== landed") == 1
    head = repo.run("git", "rev-parse", "HEAD").strip()
    assert landed(repo.path, head) == {"kill-seed=0"}
    metrics = json.loads(repo.run("git", "show", f"{exp_ref(head, 'kill-seed=0')}:metrics/comparison.json"))
    assert np.isfinite(metrics["ais"]["gap"])
    assert not any((tmp_path / "work").iterdir()), "the retry cleared the killed attempt's clone, then its own"


def test_a_two_node_cluster_lands_runs_through_a_bare_git_repo_and_a_dvc_remote(repo, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    bare, storage = tmp_path / "origin.git", tmp_path / "storage"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    repo.run("git", "remote", "add", "origin", str(bare))
    repo.dvc("remote", "add", "-d", "storage", str(storage))
    repo.commit("remotes")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        outcomes = sweep(Options(name="two", sets=["fits.vae.lr=0.001,0.003"], seeds=[0, 1], address=cluster.address,
                                 git_remote="origin"), progress=False)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert all(o.ok for o in outcomes) and len(outcomes) == 4
    assert len({o.node for o in outcomes}) == 2, "both nodes ran runs"
    shown = exp_show(repo)
    assert {f"two-lr={lr}-seed={s}" for lr in ("0.001", "0.003") for s in (0, 1)} <= set(shown)
    # the experiments went through the remote: refs in the bare repository, outputs in the DVC remote
    refs = subprocess.run(["git", "for-each-ref", "refs/exps"], cwd=bare, capture_output=True, text=True,
                          check=True).stdout
    assert refs.count("two-lr=") == 4
    assert any(storage.rglob("*")) and (storage / "runs").is_dir()
    # ... and the run cache crossed nodes: a train_direct another node computed was restored, not re-run
    logs = [(repo.path / ".dvc/tmp/sweeps/two" / f"two-lr=0.003-seed={s}.log").read_text() for s in (0, 1)]
    assert any("Stage 'train@direct' is cached" in log for log in logs)
    # the data came back too: an experiment applies from this repository's cache
    repo.dvc("exp", "apply", "two-lr=0.003-seed=1")
    assert (repo.path / "models/direct.pt").is_file()
    _, children = sweep_runs(repo, "two")
    assert len(children) == 4
