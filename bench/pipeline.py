"""Benchmark: the whole `dvc repro` against the notebook's two training loops, in one run.

    python bench/pipeline.py --repo /path/to/clone --out bench/results-pipeline-cpu.md

`--repo` is a clone of this project whose params.yaml points at the data to use (full-size
Fashion-MNIST from a local mirror, say). The command forces every stage (`dvc repro -f`) and times it,
then times one epoch of each of the notebook's training loops (bench/reference.py, on the clone's
prepared training split, each in a fresh process) and multiplies by the epochs params.yaml asks for.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", required=True, help="a clone of the project, params set for the data to use")
    parser.add_argument("--out", help="write the Markdown result here too")
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    params = yaml.safe_load((repo / "params.yaml").read_text())

    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-f"], cwd=repo, check=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"}, stdout=subprocess.DEVNULL)
    pipeline = time.perf_counter() - start

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
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
