"""The whole pipeline on a CUDA GPU, ready for the first machine that has one.

    python bench/gpu.py --repo /path/to/clone --cpu-repo /path/to/cpu-clone --out bench/results-pipeline-cuda.md

`--repo` is a clone of this project whose params.yaml points at full-size Fashion-MNIST (a local mirror);
the script sets `device: cuda` in it, forces every stage (`dvc repro -f`) and times it, then times the
notebook's two training loops on the same GPU (bench/reference.py, warm: the best of `--repeat` runs in one
process after a first one) times the epochs params.yaml asks for. With `--cpu-repo` (a clone that ran the
same params on the CPU) it checks that each fit's AIS and IWAE NLL agree across the devices within their
stated errors: 3 combined standard errors plus both BDMC gaps for AIS (CPU and CUDA draw different
numbers from one seed, so the numbers differ by their sampling error, not by nothing).

On a machine without a CUDA device it says so, writes nothing and exits 0 (tests/test_portability.py runs
that path).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import measure
from pipeline import commit, repro


def agreement(cuda: dict, cpu: dict) -> tuple[list[str], bool]:
    """Markdown rows comparing each fit's held-out NLLs across devices, and whether all agree."""
    rows, ok = [], True
    for fit, c in cuda["fits"].items():
        p = cpu["fits"][fit]
        for key, what in (("ais_nll", "AIS"), ("iwae_nll", "IWAE")):
            diff = c["test"][key] - p["test"][key]
            allowed = 3 * math.hypot(c["test"][key + "_se"], p["test"][key + "_se"])
            if key == "ais_nll":
                allowed += abs(c["bdmc"]["gap"]) + abs(p["bdmc"]["gap"])
            ok &= abs(diff) <= allowed
            rows.append(f"| {fit} | {what} NLL | {c['test'][key]:.2f} | {p['test'][key]:.2f} | {diff:+.2f} | "
                        f"{allowed:.2f} | {'yes' if abs(diff) <= allowed else '**no**'} |")
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", required=True, help="a clone of the project, params set for full-size data")
    parser.add_argument("--cpu-repo", help="a clone that ran the same params on the CPU: check the numbers agree")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each notebook loop; the best counts")
    parser.add_argument("--out", help="write the Markdown result here too")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device on this machine: the GPU run is skipped, nothing was written")
        return 0
    repo = Path(args.repo).resolve()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["device"] = "cuda"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    pipeline = repro(repo)

    case_args = argparse.Namespace(data=str(repo / "data/prepared/train.pt"), device="cuda", threads=0,
                                   repeat=args.repeat)
    epochs = {"vae_epoch": params["train_vae"]["epochs"], "direct_epoch": params["train_direct"]["epochs"]}
    loops = {case: measure(case, "reference", case_args)[0] * n for case, n in epochs.items()}
    notebook = sum(loops.values())
    gpu = torch.cuda.get_device_name(0)
    lines = [f"GPU: {gpu}, torch {torch.__version__}. Data: `{params['data']['dataset']}`, commit {commit(repo)}.",
             f"Command: `python bench/gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             "| what | seconds |", "|---|---|", f"| `dvc repro -f`, every stage, device: cuda | {pipeline:.0f} |",
             *(f"| notebook loop on the GPU: {epochs[c]} x one `{c}` (best of {args.repeat}) | {s:.0f} |"
               for c, s in loops.items()),
             f"| notebook's two training loops | {notebook:.0f} |", "",
             f"The whole pipeline takes {pipeline / notebook:.2f} of the notebook's two loops on this GPU.", ""]
    ok = True
    if args.cpu_repo:
        details = [json.loads((Path(r) / "metrics/comparison_details.json").read_text()) for r in (repo, args.cpu_repo)]
        rows, ok = agreement(*details)
        lines += ["| fit | estimator | CUDA | CPU | difference | allowed | agree |", "|---|---|---|---|---|---|---|",
                  *rows, ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
