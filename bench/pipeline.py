"""Benchmark: the whole `dvc repro` against the notebook's two training loops, in one run.

    python bench/pipeline.py --repo /path/to/clone --out bench/results-pipeline-cpu.md

`--repo` is a clone of this project whose params.yaml points at the data to use (full-size
Fashion-MNIST from a local mirror, say). The command forces every stage (`dvc repro -f`) and times it,
then times one epoch of each of the notebook's training loops (bench/reference.py, on the clone's
prepared training split, each in a fresh process) and multiplies by the epochs params.yaml asks for.
With `--switch-off evaluate.anatomy` it then forces every stage again with that param set to false (and
puts params.yaml back): what the switched-off part adds to the whole pipeline, measured in the same run.
With `--baseline /path/to/other-clone` it times that clone's `dvc repro -f` too (another commit, same
params and data: today's main, say), and each `--experiment KEY=VALUE` (repeatable) then times `dvc exp run
-S KEY=VALUE` from the full run's state (params.yaml, dvc.lock and the outputs put back before each): the
stages it ran, its share of the full run, and whether every number of the fits it did not touch (their
metrics/fits/<fit>/ files) stayed bit for bit. With `--repeat N` each clone's full run is timed N times,
alternating between the clones, and the medians are compared: this VM's speed drifts by 10-25% over minutes.

    python bench/pipeline.py --repo /path/to/clone --baseline /path/to/main-clone --repeat 2 \
        --experiment visualize.tsne_perplexity=20 --experiment evaluate.gap_steps=100 \
        --experiment fits.direct.mc_samples=32 --out bench/results-pipeline-cpu.md
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
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


def fit_results(repo: Path) -> dict[str, bytes]:
    """Every file of every fit's results (metrics/fits/<fit>/), by path."""
    fits = sorted(p for p in (repo / "metrics/fits").glob("*") if p.is_dir())  # not DVC's .gitignore
    return {str(f.relative_to(repo)): f.read_bytes() for fit in fits for f in sorted(fit.rglob("*")) if f.is_file()}


def experiment(repo: Path, change: str) -> tuple[float, list[str], str]:
    """`dvc exp run -S change` from the full run's state: its seconds, the stages it ran, and which fits' results
    it left bit for bit (those whose stages it did not run)."""
    saved = {name: (repo / name).read_bytes() for name in ("params.yaml", "dvc.lock")}
    before = fit_results(repo)
    try:
        seconds, out = dvc(repo, "exp", "run", "-S", change)
        ran = sorted(set(re.findall(r"Running stage '([\w@]+)'", out)))
        after = fit_results(repo)
    finally:
        for name, data in saved.items():
            (repo / name).write_bytes(data)
        dvc(repo, "checkout", "--force")
    fits = sorted({path.split("/")[2] for path in before})
    untouched = [f for f in fits if not any(stage.endswith(f"@{f}") for stage in ran)]
    same = [f for f in untouched if all(after.get(p) == data for p, data in before.items() if p.split("/")[2] == f)]
    return seconds, ran, ", ".join(f"{f}: {'yes' if f in same else 'NO'}" for f in untouched) or "(every fit ran)"


def commit(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", required=True, help="a clone of the project, params set for the data to use")
    parser.add_argument("--switch-off", metavar="STAGE.KEY", help="a boolean param: time the pipeline again without it")
    parser.add_argument("--baseline", help="another clone (another commit, same params): its `dvc repro -f` too")
    parser.add_argument("--experiment", metavar="KEY=VALUE", action="append", default=[],
                        help="then time `dvc exp run -S KEY=VALUE` from the full run's state (repeatable)")
    parser.add_argument("--repeat", type=int, default=1, help="full runs of each clone, alternating (the median "
                        "counts): this VM's speed drifts by 10-25%% over minutes")
    parser.add_argument("--out", help="write the Markdown result here too")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: at least 1 full run of each clone")
    repo = Path(args.repo).resolve()
    text = (repo / "params.yaml").read_text()
    params = yaml.safe_load(text)
    runs: dict[str, list[float]] = {"repo": [], "baseline": []}
    for _ in range(args.repeat):  # alternating, so a drift in the machine's speed reaches both alike
        if args.baseline:
            runs["baseline"].append(repro(Path(args.baseline).resolve()))
        runs["repo"].append(repro(repo))  # last: the experiments start from this clone's full run
    pipeline = statistics.median(runs["repo"])
    baseline = statistics.median(runs["baseline"]) if args.baseline else None

    def each(name: str) -> str:
        return f" (median of {', '.join(f'{t:.0f}' for t in runs[name])})" if args.repeat > 1 else ""

    case_args = argparse.Namespace(data=str(repo / "data/prepared/train.pt"), device="cpu", threads=0, repeat=1)
    fits = params.get("fits") or {"vae": params["train_vae"], "direct": params["train_direct"]}  # or an older layout
    epochs = {"vae_epoch": fits["vae"]["epochs"], "direct_epoch": fits["direct"]["epochs"]}
    loops = {case: measure(case, "reference", case_args)[0] * n for case, n in epochs.items()}
    notebook = sum(loops.values())
    table = (f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores. Data: `{params['data']['dataset']}`.\n"
             f"Command: `python bench/pipeline.py {' '.join(sys.argv[1:])}`\n\n"
             "| what | seconds |\n|---|---|\n"
             f"| `dvc repro -f`, every stage{each('repo')} | {pipeline:.0f} |\n"
             + (f"| `dvc repro -f` of the baseline clone ({commit(Path(args.baseline))}){each('baseline')} | "
                f"{baseline:.0f} |\n" if baseline is not None else "")
             + "".join(f"| notebook loop: {epochs[c]} x one `{c}` | {s:.0f} |\n" for c, s in loops.items())
             + f"| notebook's two training loops | {notebook:.0f} |\n\n"
             f"The whole pipeline takes {pipeline / notebook:.2f} of the notebook's two training loops"
             + (f"; the baseline's {baseline / notebook:.2f}. This clone against the baseline: "
                f"{pipeline / baseline:.2f}" if baseline else "") + ".\n")
    if args.experiment:
        table += (f"\n| experiment, from the full run | ran | seconds | of the full run | untouched fits bit for bit |\n"
                  f"|---|---|---|---|---|\n| `dvc repro -f` | every stage | {pipeline:.0f} | 1.00 | |\n")
    for change in args.experiment:
        seconds, ran, same = experiment(repo, change)
        table += (f"| `dvc exp run -S {change}` | {', '.join(ran)} | {seconds:.0f} | {seconds / pipeline:.2f} | "
                  f"{same} |\n")
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
