"""Benchmark: runs per hour of `latentfit sweep` against `dvc queue start -j 2`, the same experiments, one run.

    python bench/sweep.py --repo /path/to/clone --out bench/results-sweep-cpu.md

`--repo` is a clone of this project after a committed `dvc repro` (so both sides start from the same
run cache). Each side works on its own copy of it: the queue side queues the experiments with
`dvc exp run --queue -S ...` and times `dvc queue start -j 2` until every experiment has landed;
the sweep side times `latentfit sweep` over the same grid and seeds on a local Ray instance
(one CPU per run, so two at a time on a 2-core machine, as the queue's two workers; the queue's workers
share the cores as every stage does: cores / running stages threads each).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import cpu_name
from latentfit.sweep.grid import SEED_KEYS
from latentfit.sweep.repo import landed

ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}


def run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def queue(repo: Path, key: str, values: list[str], seeds: list[int]) -> float:
    dvc = [sys.executable, "-m", "dvc"]
    for value, seed in itertools.product(values, seeds):
        sets = [a for k in SEED_KEYS for a in ("-S", f"{k}={seed}")]
        run([*dvc, "exp", "run", "--queue", "-n", f"q-{value}-{seed}", "-S", f"{key}={value}", *sets], repo)
    total, head = len(values) * len(seeds), run(["git", "rev-parse", "HEAD"], repo).strip()
    start = time.perf_counter()
    subprocess.run([*dvc, "queue", "start", "-j", "2"], cwd=repo, env=ENV,
                   capture_output=True, check=True)
    while len(landed(repo, head)) < total:
        status = run([*dvc, "queue", "status"], repo)
        if "Failed" in status:
            raise SystemExit(f"a queued experiment failed:\n{status}")
        time.sleep(1)
    elapsed = time.perf_counter() - start
    subprocess.run([*dvc, "queue", "stop"], cwd=repo, env=ENV, capture_output=True, check=False)
    return elapsed


def sweep(repo: Path, key: str, values: list[str], seeds: list[int]) -> float:
    latentfit = str(Path(sys.executable).parent / "latentfit")
    start = time.perf_counter()
    run([latentfit, "sweep", "-S", f"{key}={','.join(values)}", "--seeds", ",".join(map(str, seeds)), "--name", "s",
         "--no-progress"], repo)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", required=True, help="a clone of the project after a committed dvc repro")
    parser.add_argument("-S", dest="grid", default="train_vae.lr=0.002,0.003", help="one swept param, KEY=V1,V2")
    parser.add_argument("--seeds", default="1,2", help="seeds (not the committed one: nothing may be cached)")
    parser.add_argument("--first", choices=("queue", "sweep"), default="queue",
                        help="which side runs first (run the benchmark both ways to see drift on a shared VM)")
    parser.add_argument("--out", help="write the Markdown result here too")
    parser.add_argument("--append", action="store_true", help="add to --out instead of replacing it")
    args = parser.parse_args()
    key, _, text = args.grid.partition("=")
    values, seeds = text.split(","), [int(s) for s in args.seeds.split(",")]
    source = Path(args.repo).resolve()
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        sides = [("dvc queue start -j 2", queue), ("latentfit sweep", sweep)]
        for side, fn in sides if args.first == "queue" else sides[::-1]:
            copy = Path(tmp) / side.split()[0]
            shutil.copytree(source, copy, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts"))
            seconds[side] = fn(copy, key, values, seeds)
            print(f"{side}: {seconds[side]:.0f} s", flush=True)
    n = len(values) * len(seeds)
    rate = {side: 3600 * n / s for side, s in seconds.items()}
    ratio = rate["latentfit sweep"] / rate["dvc queue start -j 2"]
    table = (f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores. Repository: `{source.name}`; {n} experiments: "
             f"`-S {args.grid}` x seeds {args.seeds}.\n"
             f"Command: `python bench/sweep.py {' '.join(sys.argv[1:])}`\n\n"
             "| what | seconds | runs per hour |\n|---|---|---|\n"
             + "".join(f"| `{side}` | {seconds[side]:.0f} | {rate[side]:.1f} |\n" for side in seconds)
             + f"\n`latentfit sweep` runs {ratio:.2f}x the queue's runs per hour.\n")
    print(table)
    if args.out:
        out = Path(args.out)
        out.write_text((out.read_text() + "\n" if args.append and out.exists() else "") + table)


if __name__ == "__main__":
    main()
