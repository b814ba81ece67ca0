"""Where a sweep's runs come from and land: the user's git repository, its experiment refs (DVC's own
`ExpRefInfo`), its DVC cache or remote, and reading a landed run's files back through DVC's API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from latentfit.sweep.spec import Options, Sweep, SweepError
from latentfit.sweep.worker import Transport, push_run_cache_outputs


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


def exp_ref(commit: str, name: str | None = None) -> str:
    """The git ref of experiment `name` of baseline `commit` (or the prefix of all of them), as DVC names it."""
    from dvc.repo.experiments.refs import ExpRefInfo

    return str(ExpRefInfo(commit, name)) + ("" if name else "/")


def landed(repo: Path, commit: str) -> set[str]:
    """The names of the experiments of baseline `commit` in `repo`."""
    from dvc.repo.experiments.refs import ExpRefInfo

    refs = git(repo, "for-each-ref", "--format=%(refname)", exp_ref(commit))
    return {ExpRefInfo.from_ref(ref).name for ref in refs.splitlines() if ref}


def read_json(repo: Path, rev: str, path: str) -> dict[str, Any]:
    """A JSON file as revision `rev` (an experiment's ref) holds it, git-tracked or in DVC's cache; {} if absent."""
    import dvc.api

    try:
        return json.loads(dvc.api.read(path, repo=str(repo), rev=rev))
    except Exception:  # noqa: BLE001 - a run without the file: its metrics are missing, not an error
        return {}


def transport(repo: Path, commit: str, options: Options) -> tuple[Transport, str | None]:
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
    pushed = dvc(sweep.repo, "push", "--run-cache", "--quiet", "-r", sweep.dvc_remote)
    try:
        push_run_cache_outputs(sweep.repo, sweep.dvc_remote)
    except Exception as err:  # noqa: BLE001 - only costs the runs a recomputation
        pushed = subprocess.CompletedProcess([], 1, "", str(err))
    if pushed.returncode != 0:
        print(f"note: this repository's outputs and run cache did not all reach the DVC remote "
              f"({pushed.stderr.strip()[-300:]}); runs will recompute what is missing", file=sys.stderr)
