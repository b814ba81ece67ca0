"""`latentfit sweep`: every run of a grid x seeds as a Ray task, landing as DVC experiments in the
user's repository and as MLflow runs under one sweep run.

Ray places the runs (a local instance sized to this machine, or a cluster with `--address`); DVC runs
each pipeline and moves its experiment (`dvc exp push`/`pull`, or one shared cache on one machine);
MLflow records it. This module only plans the runs, orders the ones that share a stage, and reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import LatentfitError, ParamsError
from ..io import write_json
from ..tracking import tracking_env_kept, tracking_uri
from .grid import Run, format_overrides, plan
from .worker import Outcome, Transport, push_run_cache_outputs, run_experiment, tail


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
    gpus_per_run: float = 0.0
    max_retries: int = 2             # Ray re-runs a task whose worker or node died
    workdir: str | None = None       # where runs clone the repository (default: the node's temp dir)
    dry_run: bool = False


def git(repo: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise SweepError(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip()}")
    return done.stdout.strip()


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          env=env, check=False)


def find_repo(start: Path | None = None) -> Path:
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=start or Path.cwd(),
                         capture_output=True, text=True, check=False)
    root = Path(top.stdout.strip()) if top.returncode == 0 else None
    if root is None or not (root / "dvc.yaml").is_file():
        raise SweepError("run latentfit sweep inside the project's git repository (where dvc.yaml is)")
    return root


def exp_ref_prefix(commit: str) -> str:
    """Where DVC keeps the experiments of a baseline commit."""
    return f"refs/exps/{commit[:2]}/{commit[2:]}/"


def landed(repo: Path, commit: str) -> set[str]:
    prefix = exp_ref_prefix(commit)
    refs = git(repo, "for-each-ref", "--format=%(refname)", prefix)
    return {ref.removeprefix(prefix) for ref in refs.splitlines() if ref}


# -- which runs wait for which ------------------------------------------------------------------------


def stage_params(dvc_yaml: dict[str, Any]) -> dict[str, set[str]]:
    """For each stage, the params (sections or dotted keys) of the stage and every stage upstream of it:
    two runs that agree on those compute the same outputs for it, so one can take them from the run cache."""
    stages = dvc_yaml.get("stages", {})

    def path_of(entry: Any) -> str:
        return next(iter(entry)) if isinstance(entry, dict) else str(entry)

    outs = {name: {path_of(o) for o in s.get("outs", [])} for name, s in stages.items()}
    closure: dict[str, set[str]] = {}
    for name, stage in stages.items():  # dvc.yaml lists a stage after the stages whose outputs it reads
        own = {p for p in stage.get("params", []) if isinstance(p, str)}
        deps = {path_of(d) for d in stage.get("deps", [])}
        for upstream, paths in outs.items():
            if upstream in closure and deps & paths:
                own |= closure[upstream]
        closure[name] = own
    return closure


def leaders(runs: list[Run], closure: dict[str, set[str]]) -> dict[str, list[str]]:
    """For each run, the earlier runs that compute one of its stages with the same params. It starts
    after them and takes that stage from the run cache (in a z_dim x M grid, train_vae runs once per
    z_dim and seed). A stage that every run shares is left alone: nobody would start."""

    def relevant(key: str, params: set[str]) -> bool:
        return any(key == p or key.startswith(p + ".") for p in params)

    groups: dict[tuple, list[str]] = defaultdict(list)
    for run in runs:
        for stage, params in closure.items():
            signature = tuple(sorted((k, json.dumps(v)) for k, v in run.overrides.items() if relevant(k, params)))
            groups[(stage, signature)].append(run.name)
    waits: dict[str, list[str]] = {run.name: [] for run in runs}
    for members in groups.values():
        if 1 < len(members) < len(runs):
            for follower in members[1:]:
                if members[0] not in waits[follower]:
                    waits[follower].append(members[0])
    return waits


# -- the sweep ----------------------------------------------------------------------------------------


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

    def write_plan(self) -> None:
        write_json(self.out_dir / "plan.json", {
            "name": self.options.name, "commit": self.commit, "sets": self.options.sets, "seeds": self.options.seeds,
            "runs": [{"name": r.name, "point": dict(r.point), "seed": r.seed} for r in self.runs]})


def prepare(options: Options, repo: Path | None = None) -> Sweep:
    """Check everything a sweep needs, before anything runs: a clean tree, valid params for every run,
    a reachable transport. Raises SweepError or ParamsError naming the problem."""
    repo = find_repo(repo)
    dirty = git(repo, "status", "--porcelain", "--untracked-files=no")
    if dirty:
        raise SweepError("the working tree has uncommitted changes; a sweep runs the committed code and params "
                         f"of HEAD. Commit or stash them first:\n{dirty}")
    commit = git(repo, "rev-parse", "HEAD")
    try:
        params = yaml.safe_load(git(repo, "show", f"{commit}:params.yaml")) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"params.yaml at HEAD is not valid YAML: {err}") from err
    runs = plan(options.name, options.sets, options.seeds, params)
    done = landed(repo, commit)
    todo = [run for run in runs if run.name not in done]
    if options.cpus_per_run <= 0 or options.gpus_per_run < 0:
        raise SweepError("--cpus-per-run must be > 0 and --gpus-per-run >= 0")
    transport, remote = _transport(repo, commit, options)
    experiment = dict(runs[0].fixed).get("tracking.experiment") if runs else None
    experiment = experiment or (params.get("tracking") or {}).get("experiment", "latentfit")
    uri = tracking_uri(repo)  # the stages' store
    if options.address and uri.startswith("sqlite:///"):
        print(f"warning: with --address, runs on other machines log to {uri} on their own disk, not this one's; "
              "set MLFLOW_TRACKING_URI to a tracking server every node reaches.", file=sys.stderr)
    return Sweep(repo, options, commit, runs, todo, transport, uri, experiment, remote)


def _transport(repo: Path, commit: str, options: Options) -> tuple[Transport, str | None]:
    """How runs reach the commit and send their experiments back, and the DVC remote's name (remote mode)."""
    if options.git_remote is None:
        if options.address:
            raise SweepError("--address runs on other machines, which cannot see this repository: give --git-remote "
                             "(a git remote they can reach) and configure a DVC remote (dvc remote add -d ...)")
        cache = dvc(repo, "cache", "dir")
        if cache.returncode != 0:
            raise SweepError(f"dvc cache dir failed: {cache.stderr.strip()}")
        return Transport(source=str(repo), git_remote=str(repo), cache_dir=cache.stdout.strip()), None
    url = git(repo, "remote", "get-url", options.git_remote, check=False) or options.git_remote
    if subprocess.run(["git", "ls-remote", url], cwd=repo, capture_output=True, check=False).returncode != 0:
        raise SweepError(f"git remote {options.git_remote!r} cannot be reached: check its URL (git remote -v) "
                         "and that this machine can push to it")
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:  # DVC's own reading of its config: relative paths resolved
        remotes, remote_name = dvc_repo.config["remote"], options.dvc_remote or dvc_repo.config["core"].get("remote")
    if not remote_name:
        raise SweepError("runs on other machines send their outputs through a DVC remote, and this repository has "
                         "none: add one with `dvc remote add -d storage <url>` (or pass --dvc-remote NAME)")
    if remote_name not in remotes:
        raise SweepError(f"DVC remote {remote_name!r} is not configured (dvc remote list: {', '.join(remotes) or 'none'})")
    dvc_url = str(remotes[remote_name]["url"])
    return Transport(source=url, git_remote=url, base_ref=f"refs/sweeps/{options.name}", dvc_remote=dvc_url), remote_name


def publish_base(sweep: Sweep) -> None:
    """Remote mode: put the sweep's commit where the runs can fetch it, and this repository's outputs and
    run cache in the DVC remote, so the stages the commit already ran are not re-run on every node."""
    t = sweep.transport
    if t.shared_cache:
        return
    git(sweep.repo, "push", "--quiet", "--force", t.git_remote, f"{sweep.commit}:{t.base_ref}")
    pushed = dvc(sweep.repo, "push", "--run-cache", "--quiet", "-r", sweep.remote)
    try:
        push_run_cache_outputs(sweep.repo, sweep.remote)
    except Exception as err:  # noqa: BLE001 - only costs the runs a recomputation
        pushed = subprocess.CompletedProcess([], 1, "", str(err))
    if pushed.returncode != 0:
        print(f"note: this repository's outputs and run cache did not all reach the DVC remote "
              f"({pushed.stderr.strip()[-300:]}); runs will recompute what is missing", file=sys.stderr)


@contextlib.contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `uri` for a block, leaving MLFLOW_TRACKING_URI as it was."""
    import mlflow

    with tracking_env_kept():
        mlflow.set_tracking_uri(uri)
        yield


def sweep_parent(sweep: Sweep) -> str | None:
    """The sweep's MLflow run (found again when the same sweep is re-run), with its plan as params."""
    from ..tracking import store_lock, use_experiment

    try:
        import mlflow

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
    except Exception as err:  # noqa: BLE001 - DVC is the source of truth; tracking is reported, not fatal
        print(f"warning: MLflow store {sweep.tracking_uri} cannot take the sweep's run ({str(err).splitlines()[0]}); "
              "the experiments still land in DVC", file=sys.stderr)
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
    from ..config import parse_params, to_flat_dict
    from ..tracking import PARENT, flatten_numbers, loggable_params, store_lock
    from .summary import read_at

    try:
        import mlflow

        with store_lock(sweep.tracking_uri):
            client = mlflow.MlflowClient(sweep.tracking_uri)
            exp_id = client.get_run(parent).info.experiment_id
            query = f"tags.dvc_exp = '{name}' and tags.stage = '{PARENT}' and tags.sweep = '{sweep.options.name}'"
            if client.search_runs([exp_id], query, max_results=1):
                return
            ref = exp_ref_prefix(sweep.commit) + name
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
            for stage, path in (("train_vae", "metrics/train_vae.json"), ("train_direct", "metrics/train_direct.json"),
                                ("evaluate", "metrics/evaluate_details.json")):
                for key, value in flatten_numbers(read_at(sweep.repo, ref, path)).items():
                    client.log_metric(created.info.run_id, f"{stage}.{key}", float(value))
            client.set_terminated(created.info.run_id, "FINISHED")
    except Exception as err:  # noqa: BLE001 - DVC is the source of truth; tracking is reported, not fatal
        print(f"warning: could not record {name} in MLflow ({str(err).splitlines()[0]})", file=sys.stderr)


def run_env(sweep: Sweep, run: Run, parent: str | None) -> dict[str, str]:
    from ..tracking import PARENT_RUN_ENV, RUN_TAGS_ENV

    tags = {"sweep": sweep.options.name, "sweep_point": run.point_label, "sweep_seed": str(run.seed)}
    env = {"MLFLOW_TRACKING_URI": sweep.tracking_uri, RUN_TAGS_ENV: json.dumps(tags)}
    return env | ({PARENT_RUN_ENV: parent} if parent else {})


def start_ray(options: Options) -> None:
    import ray

    if ray.is_initialized():
        return
    if options.address:
        ray.init(address=options.address, log_to_driver=False)
    else:  # a local instance sized to this machine: every core, every GPU it finds
        ray.init(include_dashboard=False, log_to_driver=False)


def execute(sweep: Sweep, parent: str | None, progress: bool = True) -> list[Outcome]:
    """Run what has not landed yet, each pipeline run under the sweep's MLflow run `parent`; return every
    run's outcome. Failed runs do not stop the others."""
    import ray
    from tqdm import tqdm

    o = sweep.options
    identity = (git(sweep.repo, "config", "user.name", check=False), git(sweep.repo, "config", "user.email", check=False))
    publish_base(sweep)
    start_ray(o)
    events = ray.remote(num_cpus=0)(Progress).remote()
    settled = ray.remote(num_cpus=0)(_wait_for)
    task = ray.remote(num_cpus=o.cpus_per_run, num_gpus=o.gpus_per_run, max_retries=o.max_retries,
                      retry_exceptions=False)(run_experiment)
    waits = leaders(sweep.todo, stage_params(yaml.safe_load((sweep.repo / "dvc.yaml").read_text())))
    by_name: dict[str, Any] = {}
    for run in sweep.todo:
        before = [by_name[name] for name in waits[run.name]]
        after = settled.remote(before) if before else None
        by_name[run.name] = task.options(name=run.name).remote(
            run, sweep.commit, sweep.transport, run_env(sweep, run, parent), str(sweep.log_dir / f"{run.name}.log"),
            o.workdir, events, identity, after)
    pending = {ref: name for name, ref in by_name.items()}
    outcomes: list[Outcome] = []
    running: set[str] = set()
    shown = ""
    bar = tqdm(total=len(pending), unit="run", desc=f"sweep {o.name}", disable=not progress, dynamic_ncols=True)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for kind, name, node, log in _drain(events):
                if kind == "started":
                    running.add(name)
                    bar.write(f"{name}: running on {node}, log {log}")
            for ref in ready:
                name = pending.pop(ref)
                running.discard(name)
                outcome = _outcome(ref, name, sweep)
                if outcome.ok:
                    outcome = _land(sweep, outcome)
                if outcome.ok:
                    record_restored(sweep, parent, name)
                outcomes.append(outcome)
                bar.write(_line(outcome))
                bar.update(1)
            failed = sum(not x.ok for x in outcomes)
            state = f"done {len(outcomes) - failed}, running {len(running)}, failed {failed}"
            if state != shown:  # redraw on a change only: a log file gets a line per change
                bar.set_postfix_str(shown := state)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        bar.close()
        raise SweepError(f"interrupted: {sum(x.ok for x in outcomes)} run(s) landed; run the same command again "
                         "to run the rest (landed runs are skipped)") from None
    bar.close()
    return outcomes


def _wait_for(refs: list) -> None:
    """A zero-CPU Ray task that finishes once every run in `refs` has finished, however it ended: a run
    that waits on it starts after them, and does not inherit their failure."""
    import ray

    if refs:
        ray.wait(refs, num_returns=len(refs))


class Progress:
    """A Ray actor the runs report to when they start (where, and where their log is)."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def started(self, name: str, node: str, log: str) -> None:
        self.events.append(("started", name, node, log))

    def drain(self) -> list[tuple]:
        events, self.events = self.events, []
        return events


def _drain(events) -> list[tuple]:
    import ray

    try:
        return ray.get(events.drain.remote(), timeout=10)
    except Exception:  # noqa: BLE001 - progress reports are best effort
        return []


def _outcome(ref, name: str, sweep: Sweep) -> Outcome:
    import ray

    log = sweep.log_dir / f"{name}.log"
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:  # the worker or its node died more often than max_retries allows
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return Outcome(name, False, "?", str(log), 0.0, f"{type(err).__name__}: {first}", tail(log))


def _land(sweep: Sweep, outcome: Outcome) -> Outcome:
    """Remote mode: fetch the experiment (refs, outputs, run cache) into this repository."""
    if sweep.transport.shared_cache:
        return outcome
    pulled = dvc(sweep.repo, "exp", "pull", "-r", sweep.remote, sweep.transport.git_remote, outcome.name)
    if pulled.returncode == 0 and outcome.name in landed(sweep.repo, sweep.commit):
        return outcome
    return Outcome(outcome.name, False, outcome.node, outcome.log, outcome.seconds,
                   "dvc exp pull failed", (pulled.stdout + pulled.stderr)[-2000:])


def _line(outcome: Outcome) -> str:
    if outcome.ok:
        return f"{outcome.name}: landed ({outcome.seconds:.0f} s on {outcome.node})"
    return (f"{outcome.name}: FAILED: {outcome.error}\n  log: {outcome.log}\n"
            + "\n".join("  | " + line for line in outcome.tail.splitlines()))


def sweep(options: Options, repo: Path | None = None, progress: bool = True) -> list[Outcome]:
    """Plan, run and summarise a sweep; raise SweepError listing the runs that failed."""
    from .summary import summarize

    s = prepare(options, repo)
    print(f"sweep {options.name}: {len(s.runs)} run(s) at commit {s.commit[:8]}, "
          f"{len(s.runs) - len(s.todo)} already landed, {len(s.todo)} to run")
    for run in s.runs:
        state = "landed" if run not in s.todo else "to run"
        print(f"  {run.name}  [{format_overrides(run.overrides) or 'committed params'}, seed {run.seed}]  {state}")
    if options.dry_run:
        return []
    s.write_plan()
    parent = sweep_parent(s) if s.todo else None
    outcomes = execute(s, parent, progress) if s.todo else []
    failed = [x for x in outcomes if not x.ok]
    if len(s.runs) > len(failed):
        written = summarize(s.repo, options.name, parent_run=parent, tracking_uri=s.tracking_uri)
        print("summary: " + ", ".join(str(p.relative_to(s.repo)) for p in written))
    if failed:
        raise SweepError(f"{len(failed)} of {len(s.runs)} run(s) failed: {', '.join(x.name for x in failed)}. "
                         "Read their logs above, fix the cause, and run the same command again: landed runs are "
                         "skipped.")
    return outcomes

