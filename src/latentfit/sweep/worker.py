"""One run of a sweep, as a Ray task executes it on any node: clone the repository at the sweep's
commit, `dvc exp run` the pipeline with the run's params, and send the experiment back with
`dvc exp push`. Nothing lands until that push, a single ref update, so a run that fails or a
worker that dies leaves no half-written experiment; its clone is thrown away."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentfit.sweep.grid import Run


@dataclass(frozen=True)
class Transport:
    """How a run reaches the commit and how its experiment comes back.

    On one machine (`git_remote` is the user's repository itself) runs share the user's DVC cache, so
    outputs and the run cache need no copying. Across machines runs clone from a git remote, push their
    experiment there and their outputs and run cache to a DVC remote, as `dvc exp push` does."""

    source: str                    # git URL or path the runs clone from
    git_remote: str                # where `dvc exp push` sends the experiment
    base_ref: str | None = None    # the ref that holds the sweep's commit in `source` (remote mode)
    cache_dir: str | None = None   # the user's DVC cache, shared (one machine)
    dvc_remote: str | None = None  # URL of the DVC remote (remote mode)

    @property
    def shared_cache(self) -> bool:
        return self.cache_dir is not None


@dataclass(frozen=True)
class Outcome:
    name: str
    ok: bool
    node: str
    log: str
    seconds: float
    error: str = ""
    tail: str = ""


class StepFailed(RuntimeError):
    pass


def tail(path: str | Path, lines: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _die_with_parent(args: list[str]) -> list[str]:
    """`args` prefixed so the command gets SIGKILL when the Ray worker that started it dies (Linux's
    setpriv), so a killed worker leaves no `dvc exp run` going on in a clone nobody will push."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *args] if setpriv and sys.platform == "linux" else args


def _step(args: list[str], cwd: Path, env: dict[str, str], log) -> None:
    log.write(f"\n$ {' '.join(args)}\n")
    log.flush()
    proc = subprocess.Popen(_die_with_parent(args), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        code = proc.wait()
    except BaseException:  # Ray cancelled the task, or the driver's Ctrl-C reached us: stop the run
        if hasattr(os, "killpg"):  # POSIX: the whole session the step started
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait()
        raise
    if code != 0:
        raise StepFailed(f"`{' '.join(args[:4])} ...` exited with {code}")


def push_run_cache_outputs(clone: Path, remote: str) -> int:
    """Push the files of every run-cache entry of `clone` to the DVC remote, the uncached ones included.

    `dvc push --run-cache` sends the entries but not the files of outputs marked `cache: false` (the
    metrics JSON of a training stage), which DVC keeps only in the local cache; a run on another node
    then finds the entry, misses a file, and recomputes the stage. Returns the number of files sent."""
    import yaml
    from dvc.repo import Repo
    from dvc_data.hashfile.hash_info import HashInfo

    with Repo(str(clone)) as repo:
        runs = Path(repo.stage_cache.cache_dir)
        objs = {HashInfo("md5", out["md5"]) for entry in runs.rglob("*") if entry.is_file()
                for out in (yaml.safe_load(entry.read_text()) or {}).get("outs", [])
                # single files only: a directory's .dir listing on the remote tells DVC that all of its
                # files are there, so it must arrive with them, through dvc push
                if out.get("md5") and not out["md5"].endswith(".dir")}
        return len(repo.cloud.push(objs, remote=remote).transferred)


def run_environment(base: dict[str, str], clone: Path) -> dict[str, str]:
    """The environment of a run's commands: this Python's tools first and no leftovers of an enclosing DVC
    run. (The stages import the clone's own package whatever is installed: see stages/*.py.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")} | base
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("TQDM_MININTERVAL", "10")  # progress bars in a log file: a line every 10 s
    return env


def _node() -> str:
    """This machine's name and its Ray node id (several simulated nodes share one machine's name)."""
    try:
        import ray

        return f"{socket.gethostname()} (node {ray.get_runtime_context().get_node_id()[:8]})"
    except Exception:  # noqa: BLE001 - outside Ray
        return socket.gethostname()


def run_experiment(run: Run, commit: str, transport: Transport, env: dict[str, str], log_path: str,
                   workdir: str | None = None, events: Any = None, identity: tuple[str, str] = ("", ""),
                   after: Any = None) -> Outcome:
    """Run one experiment in a fresh clone; return what happened (errors are reported, not raised).
    `after` only orders the task: Ray starts it once the runs it names have finished."""
    start, node = time.time(), _node()
    log_file = Path(log_path)
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # a node that cannot write where the driver asked: keep the log beside the run
        log_file = Path(tempfile.gettempdir()) / "latentfit-sweeps" / log_file.name
        log_file.parent.mkdir(parents=True, exist_ok=True)
    if events is not None:
        # fire and forget: a task blocked in ray.get lends its CPU to another task, which would then start early
        with contextlib.suppress(Exception):  # progress reports are best effort
            events.started.remote(run.name, node, str(log_file))
    # one directory per run (its log path names repository, sweep and run) and commit: a retry, or the sweep
    # run again, first clears what a killed attempt left
    key = hashlib.sha1(f"{log_path}\0{commit}".encode()).hexdigest()[:12]
    work = Path(workdir or tempfile.gettempdir()) / f"latentfit-{run.name[:40]}-{key}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    clone = work / "repo"
    dvc = [sys.executable, "-m", "dvc"]
    try:
        with open(log_file, "a") as log:
            log.write(f"=== {run.name} on {node} (pid {os.getpid()}), commit {commit[:12]}, "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            environ = run_environment(env, clone)
            _step(["git", "clone", "--quiet", "--no-checkout", transport.source, str(clone)], work, environ, log)
            if transport.base_ref:
                _step(["git", "fetch", "--quiet", "origin", transport.base_ref], clone, environ, log)
            _step(["git", "checkout", "--quiet", "--detach", commit], clone, environ, log)
            name, email = identity
            _step(["git", "config", "user.name", name or "latentfit sweep"], clone, environ, log)
            _step(["git", "config", "user.email", email or "latentfit@localhost"], clone, environ, log)
            push = [*dvc, "exp", "push"]
            if transport.cache_dir is not None:
                _step([*dvc, "config", "--local", "cache.dir", transport.cache_dir], clone, environ, log)
                push.append("--no-cache")
            else:
                _step([*dvc, "remote", "add", "--local", "--force", "--default", "sweep", str(transport.dvc_remote)],
                      clone, environ, log)
                # what other runs computed (their run cache and outputs), so a shared stage is not re-run
                _step([*dvc, "fetch", "--run-cache", "--quiet"], clone, environ, log)
                push.append("--run-cache")
            pull = [] if transport.shared_cache else ["--pull"]  # outputs restored from the run cache
            _step([*dvc, "exp", "run", *pull, "-n", run.name, *run.set_args()], clone, environ, log)
            if not transport.shared_cache:
                try:
                    sent = push_run_cache_outputs(clone, "sweep")
                    log.write(f"\npushed {sent} run-cache file(s) that dvc push leaves out\n")
                except Exception as err:  # noqa: BLE001 - only costs other runs a recomputation
                    log.write(f"\nwarning: run-cache files not pushed ({err}); other runs may recompute a stage\n")
            _step([*push, transport.git_remote, run.name], clone, environ, log)
            log.write(f"=== landed in {time.time() - start:.0f} s\n")
        return Outcome(run.name, True, node, str(log_file), time.time() - start)
    except (StepFailed, OSError) as err:
        return Outcome(run.name, False, node, str(log_file), time.time() - start, str(err), tail(log_file))
    finally:
        shutil.rmtree(work, ignore_errors=True)
