"""Benchmark: two experiments through `dvc queue start -j 2` against the same two run one after the other.

    python bench/parallel.py --repo /path/to/clone --out bench/results-parallel-cpu.md

`--repo` is a clone of this project whose committed params and `dvc.lock` already hold the prepared data
(`dvc repro preprocess`, committed): each side then trains and evaluates two experiments, `model.z_dim`
5 and 10. The sides use different seeds, so neither restores a stage the other computed from DVC's run
cache. No thread setting is passed to either side (OMP_NUM_THREADS and LATENTFIT_THREADS are removed
from the environment): what a user gets by default. `--all-cores` adds a third side, the queue with every
stage taking every core (LATENTFIT_THREADS = the core count, how stages ran before they shared).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import cpu_name
from latentfit.core.runtime import machine_cores
from latentfit.sweep.grid import SEED_KEYS
from latentfit.sweep.repo import landed

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LATENTFIT_THREADS")
ENV = {k: v for k, v in os.environ.items() if k not in THREAD_VARS} | {"DVC_NO_ANALYTICS": "1"}
DVC = [sys.executable, "-m", "dvc"]
Z_DIMS = (5, 10)


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env or ENV, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def sets(z_dim: int, seed: int) -> list[str]:
    return ["-S", f"model.z_dim={z_dim}", *[a for k in SEED_KEYS for a in ("-S", f"{k}={seed}")]]


def serial(repo: Path, seed: int) -> float:
    start = time.perf_counter()
    for z in Z_DIMS:
        run([*DVC, "exp", "run", "-n", f"serial-z{z}-s{seed}", *sets(z, seed)], repo)
    return time.perf_counter() - start


def queued(repo: Path, seed: int, env: dict[str, str]) -> float:
    head = run(["git", "rev-parse", "HEAD"], repo).strip()
    names = [f"queue-z{z}-s{seed}" for z in Z_DIMS]
    for z, name in zip(Z_DIMS, names, strict=True):
        run([*DVC, "exp", "run", "--queue", "-n", name, *sets(z, seed)], repo)
    start = time.perf_counter()
    run([*DVC, "queue", "start", "-j", "2"], repo, env)
    checked = time.perf_counter()
    while not set(names) <= landed(repo, head):  # git refs: cheap to poll, unlike a `dvc` process
        if time.perf_counter() - checked > 30:  # each `dvc queue status` costs a core-second: rarely
            status = run([*DVC, "queue", "status"], repo)
            if re.search(r"\bFailed\b", status):
                raise SystemExit(f"a queued experiment failed:\n{status}")
            checked = time.perf_counter()
        time.sleep(0.5)
    elapsed = time.perf_counter() - start
    run([*DVC, "queue", "stop"], repo)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1, help="the serial side's seed; the queue side uses the next "
                        "ones (use new seeds to rerun on the same clone: the run cache remembers the old)")
    parser.add_argument("--all-cores", action="store_true", help="also time the queue with every stage on every core")
    args = parser.parse_args()
    repo = args.repo.resolve()
    committed = yaml.safe_load((repo / "params.yaml").read_text())
    shown = ", ".join(f"`{section}.{key}: {committed[section][key]}`" for section, key in (
        ("data", "dataset"), ("preprocess", "train_limit"), ("train_vae", "epochs"), ("train_direct", "epochs")))
    rows = [("two experiments one after the other (`dvc exp run`, twice)", serial(repo, seed=args.seed))]
    rows.append(("the same two through `dvc queue start -j 2`", queued(repo, seed=args.seed + 1, env=ENV)))
    if args.all_cores:
        every = ENV | {"LATENTFIT_THREADS": str(machine_cores())}
        rows.append((f"`dvc queue start -j 2`, every stage on all {machine_cores()} cores", queued(repo, args.seed + 2, every)))
    reference = rows[0][1]
    lines = [f"Machine: {cpu_name()}, {machine_cores()} CPU cores. Repository `{repo}` "
             f"(`model.z_dim` {' and '.join(map(str, Z_DIMS))}; committed: {shown}; every other param its default).",
             f"Command: `python bench/parallel.py --repo {args.repo} --out {args.out} --seed {args.seed}"
             f"{' --all-cores' if args.all_cores else ''}`", "",
             "| what | seconds | against one after the other |", "|---|---|---|"]
    lines += [f"| {what} | {seconds:.0f} | {seconds / reference:.2f}x |" for what, seconds in rows]
    lines.append("")
    args.out.write_text("\n".join(lines))
    print("\n".join(lines[:len(rows) + 5]))


if __name__ == "__main__":
    main()
