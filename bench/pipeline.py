"""Benchmark: the whole `dvc repro` against the notebook's two training loops, in one run.

    python bench/pipeline.py --repo /path/to/clone --out bench/results-pipeline-cpu.md

`--repo` is a clone of this project whose params.yaml points at the data to use (full-size
Fashion-MNIST from a local mirror, say). The command forces every stage (`dvc repro -f`) and times it,
then times one epoch of each of the notebook's training loops (bench/reference.py, on the clone's
prepared training split, each in a fresh process) and multiplies by the epochs params.yaml asks for.
With `--switch-off evaluate.anatomy` it then forces every stage again with that param set to false (and
puts params.yaml back): what the switched-off part adds to the whole pipeline, measured in the same run.
With `--baseline /path/to/other-clone` it times that clone's `dvc repro -f` too (another commit, same
params and data: today's main, say), and with `--experiment train_direct.mc_samples=32` it then times
`dvc exp run -S` of that change after the full run: what an experiment on one fit costs.

    python bench/pipeline.py --repo /path/to/clone --baseline /path/to/main-clone \
        --experiment train_direct.mc_samples=32 --out bench/results-pipeline-cpu.md
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

from bench import cpu_name, measure


def dvc(repo: Path, *args: str) -> tuple[float, str]:
    """Seconds of `dvc ARGS` in `repo`, and what it printed."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, text=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"}, stdout=subprocess.PIPE)
    return time.perf_counter() - start, done.stdout


def repro(repo: Path) -> float:
    """Seconds of `dvc repro -f` in `repo`."""
    return dvc(repo, "repro", "-f")[0]


def commit(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", required=True, help="a clone of the project, params set for the data to use")
    parser.add_argument("--switch-off", metavar="STAGE.KEY", help="a boolean param: time the pipeline again without it")
    parser.add_argument("--baseline", help="another clone (another commit, same params): its `dvc repro -f` too")
    parser.add_argument("--experiment", metavar="KEY=VALUE", help="then time `dvc exp run -S KEY=VALUE`")
    parser.add_argument("--out", help="write the Markdown result here too")
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    text = (repo / "params.yaml").read_text()
    params = yaml.safe_load(text)
    pipeline = repro(repo)
    baseline = repro(Path(args.baseline).resolve()) if args.baseline else None

    case_args = argparse.Namespace(data=str(repo / "data/prepared/train.pt"), device="cpu", threads=0, repeat=1)
    epochs = {"vae_epoch": params["train_vae"]["epochs"], "direct_epoch": params["train_direct"]["epochs"]}
    loops = {case: measure(case, "reference", case_args)[0] * n for case, n in epochs.items()}
    notebook = sum(loops.values())
    table = (f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores. Data: `{params['data']['dataset']}`.\n"
             f"Command: `python bench/pipeline.py {' '.join(sys.argv[1:])}`\n\n"
             "| what | seconds |\n|---|---|\n"
             f"| `dvc repro -f`, every stage | {pipeline:.0f} |\n"
             + (f"| `dvc repro -f` of the baseline clone ({commit(Path(args.baseline))}) | {baseline:.0f} |\n"
                if baseline is not None else "")
             + "".join(f"| notebook loop: {epochs[c]} x one `{c}` | {s:.0f} |\n" for c, s in loops.items())
             + f"| notebook's two training loops | {notebook:.0f} |\n\n"
             f"The whole pipeline takes {pipeline / notebook:.2f} of the notebook's two training loops "
             f"(1/{notebook / pipeline:.1f})"
             + (f"; the baseline's {baseline / notebook:.2f} (1/{notebook / baseline:.1f})" if baseline else "") + ".\n")
    if args.experiment:
        seconds, out = dvc(repo, "exp", "run", "-S", args.experiment)
        ran = sorted(set(re.findall(r"Running stage '([\w@]+)'", out)))
        table += (f"\n| what | seconds |\n|---|---|\n| `dvc repro -f` | {pipeline:.0f} |\n"
                  f"| then `dvc exp run -S {args.experiment}` (ran {', '.join(ran)}) | {seconds:.0f} |\n\n"
                  f"The experiment takes {seconds / pipeline:.2f} of the full run.\n")
    if args.switch_off:
        stage, key = args.switch_off.split(".")
        if params[stage][key] is not True:
            raise SystemExit(f"{args.switch_off} is {params[stage][key]!r} in {repo}/params.yaml: it must be true")
        off = {**params, stage: {**params[stage], key: False}}
        try:
            (repo / "params.yaml").write_text(yaml.safe_dump(off, sort_keys=False))
            without = repro(repo)
        finally:
            (repo / "params.yaml").write_text(text)
        table += (f"\n| what | seconds |\n|---|---|\n| `dvc repro -f`, {args.switch_off}: true | {pipeline:.0f} |\n"
                  f"| `dvc repro -f`, {args.switch_off}: false | {without:.0f} |\n\n"
                  f"`{args.switch_off}` adds {pipeline / without - 1:.1%} to the whole pipeline.\n")
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
