"""`latentfit sweep`: every run of a grid x seeds as a Ray task, landing as DVC experiments in the
user's repository and as MLflow runs under one sweep run.

Ray places the runs (a local instance sized to this machine, or a cluster with `--address`); DVC runs
each pipeline and moves its experiment (`dvc exp push`/`pull`, or one shared cache on one machine);
MLflow records it. This module prepares a sweep, runs it on Ray and reports; the rest is beside it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import yaml

from latentfit.core.errors import ParamsError
from latentfit.core.tracking import tracking_uri
from latentfit.sweep.grid import format_overrides, plan
from latentfit.sweep.mlflow_runs import record_restored, run_env, sweep_parent
from latentfit.sweep.order import leaders, stage_params
from latentfit.sweep.repo import dvc, find_repo, git, landed, publish_base, transport
from latentfit.sweep.spec import Options, Sweep, SweepError
from latentfit.sweep.worker import Outcome, run_experiment, tail

__all__ = ["Options", "Sweep", "SweepError", "execute", "prepare", "sweep"]


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
    if options.cpus_per_run <= 0 or (options.gpus_per_run or 0.0) < 0:
        raise SweepError("--cpus-per-run must be > 0 and --gpus-per-run >= 0")
    how, remote = transport(repo, commit, options)
    experiment = dict(runs[0].fixed).get("tracking.experiment") if runs else None
    experiment = experiment or (params.get("tracking") or {}).get("experiment", "latentfit")
    uri = tracking_uri(repo)  # the stages' store
    if options.address and uri.startswith("sqlite:///"):
        print(f"warning: with --address, runs on other machines log to {uri} on their own disk, not this one's; "
              "set MLFLOW_TRACKING_URI to a tracking server every node reaches.", file=sys.stderr)
    return Sweep(repo, options, commit, runs, todo, how, uri, experiment, remote)


def start_ray(options: Options) -> None:
    import ray

    if ray.is_initialized():
        return
    if options.address:
        ray.init(address=options.address, log_to_driver=False)
    else:  # a local instance sized to this machine: every core, every GPU it finds
        ray.init(include_dashboard=False, log_to_driver=False)


def gpus_per_run(options: Options) -> float:
    """The GPUs Ray reserves per run: as asked, else one where the cluster has a GPU (device: auto then picks
    it, and no two runs share it), else none."""
    import ray

    if options.gpus_per_run is not None:
        return options.gpus_per_run
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


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
    task = ray.remote(num_cpus=o.cpus_per_run, num_gpus=gpus_per_run(o), max_retries=o.max_retries,
                      retry_exceptions=False)(run_experiment)
    waits = leaders(sweep.todo, stage_params(sweep.repo))
    by_name: dict[str, Any] = {}
    for run in sweep.todo:
        before = [by_name[name] for name in waits[run.name]]
        after = settled.remote(before) if before else None
        by_name[run.name] = task.options(name=run.name).remote(
            run, sweep.commit, sweep.transport, run_env(sweep, run, parent), str(sweep.log_dir / f"{run.name}.log"),
            o.workdir, events, identity, after)
    pending = {ref: name for name, ref in by_name.items()}
    outcomes: list[Outcome] = []
    running: dict[str, float] = {}  # run -> when it started (monotonic seconds)
    shown = ""
    bar = tqdm(total=len(pending), unit="run", desc=f"sweep {o.name}", disable=not progress, dynamic_ncols=True)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for kind, name, node, log in _drain(events):
                if kind == "started":
                    running[name] = time.monotonic()
                    bar.write(f"{name}: running on {node}, log {log}")
            for ref in ready:
                name = pending.pop(ref)
                running.pop(name, None)
                outcome = _outcome(ref, name, sweep)
                if outcome.ok:
                    outcome = _land(sweep, outcome)
                if outcome.ok:
                    record_restored(sweep, parent, name)
                outcomes.append(outcome)
                bar.write(_line(outcome) + (f"; still running: {still}" if (still := slowest(running)) else ""))
                bar.update(1)
            failed = sum(not x.ok for x in outcomes)
            state = f"done {len(outcomes) - failed}, running {len(running)}, failed {failed}"
            state += f"; longest: {min(running, key=running.__getitem__)}" if running else ""  # its minutes: each landed line
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


def slowest(running: dict[str, float], limit: int | None = None, now: float | None = None) -> str:
    """The running runs, longest first, with their minutes so far (`limit`: only the first few): which run
    holds the sweep up."""
    now = time.monotonic() if now is None else now
    ordered = sorted(running.items(), key=lambda item: item[1])[:limit]
    return ", ".join(f"{name} ({(now - start) / 60:.0f} min)" for name, start in ordered)


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
    pulled = dvc(sweep.repo, "exp", "pull", "-r", sweep.dvc_remote, sweep.transport.git_remote, outcome.name)
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
    from latentfit.sweep.summary import summarize  # pandas and matplotlib: loaded only once runs have landed

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
