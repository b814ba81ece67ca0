"""Benchmark: the whole `dvc repro` against the notebook's two training loops, in one run.

    python bench/pipeline.py --repo /path/to/clone --out bench/results-pipeline-cpu.md

`--repo` is a clone of this project whose params.yaml points at the data to use (full-size
Fashion-MNIST from a local mirror, say). The command forces every stage (`dvc repro -f`) and times it,
then times one epoch of each of the notebook's training loops (bench/reference.py, on the clone's
prepared training split, each in a fresh process) and multiplies by the epochs params.yaml asks for.
With `--switch-off evaluate.anatomy` it then forces every stage again with that param set to false (and
puts params.yaml back): what the switched-off part adds to the whole pipeline, measured in the same run.

    python bench/pipeline.py --repo /path/to/clone --switch-off evaluate.anatomy --out bench/results-pipeline-cpu.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import cpu_name, measure


def repro(repo: Path) -> float:
    """Seconds of `dvc repro -f` in `repo`."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-f"], cwd=repo, check=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", required=True, help="a clone of the project, params set for the data to use")
    parser.add_argument("--switch-off", metavar="STAGE.KEY", help="a boolean param: time the pipeline again without it")
    parser.add_argument("--out", help="write the Markdown result here too")
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    text = (repo / "params.yaml").read_text()
    params = yaml.safe_load(text)
    pipeline = repro(repo)

    case_args = argparse.Namespace(data=str(repo / "data/prepared/train.pt"), device="cpu", threads=0, repeat=1)
    epochs = {"vae_epoch": params["train_vae"]["epochs"], "direct_epoch": params["train_direct"]["epochs"]}
    loops = {case: measure(case, "reference", case_args)[0] * n for case, n in epochs.items()}
    notebook = sum(loops.values())
    table = (f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores. Data: `{params['data']['dataset']}`.\n"
             f"Command: `python bench/pipeline.py {' '.join(sys.argv[1:])}`\n\n"
             "| what | seconds |\n|---|---|\n"
             f"| `dvc repro -f`, all six stages | {pipeline:.0f} |\n"
             + "".join(f"| notebook loop: {epochs[c]} x one `{c}` | {s:.0f} |\n" for c, s in loops.items())
             + f"| notebook's two training loops | {notebook:.0f} |\n\n"
             f"The whole pipeline takes {pipeline / notebook:.2f} of the notebook's two training loops "
             f"(1/{notebook / pipeline:.1f}).\n")
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
