"""Benchmark: what a stage pays before its first useful line, stage by stage, in this checkout and another.

    python bench/stage_start.py --baseline /path/to/clone-of-main --out bench/results-stage-start-cpu.md

Each measurement is a fresh process in the checkout's root (the stage's own `src/` first on sys.path, as
DVC runs it): `interpreter` is `python -c pass`; `imports` is executing the stage script without its
main() (every module it imports: torch, pandas, scikit-learn, matplotlib, MLflow where it imports them);
`tracking` is opening and closing the stage's MLflow run on a warm SQLite store (importing MLflow's store,
the experiment, the parent run, the params), for a stage that opens one (an evaluation block does not);
`optimizer` is the first torch.optim.Adam step (it imports torch._dynamo), paid by the stages that fit
something. Best of --repeat; the totals weigh each script by the stage instances it runs for two fits (a
`foreach` stage twice).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import cpu_name

CHILD = r"""
import importlib.util, json, sys, time
start = time.perf_counter()
script = sys.argv[1]
spec = importlib.util.spec_from_file_location("stage_under_test", script)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)  # imports only: main() runs under __main__
imported = time.perf_counter()
if sys.argv[3] == "tracks":
    from latentfit.core.config import load_params, to_flat_dict
    from latentfit.core.tracking import stage_run
    with stage_run("bench-stage-start", to_flat_dict(load_params()), "bench-stage-start"):
        pass
tracked = time.perf_counter()
optimizer = 0.0
if sys.argv[2] == "fits":
    import torch
    before = time.perf_counter()
    p = torch.nn.Parameter(torch.zeros(3))
    adam = torch.optim.Adam([p])
    p.sum().backward()
    adam.step()
    optimizer = time.perf_counter() - before
print(json.dumps({"imports": imported - start, "tracking": tracked - imported, "optimizer": optimizer}))
"""

# what a stage script calls that creates an optimiser (a training loop, a post-hoc encoder, the classifier,
# the anatomy's per-image Gaussians)
FITTING = ("make_optimizer", "TRAINERS", "fit_posthoc_encoder", "evaluate_fit", "import reference", "anatomy_part")


def fits_something(script: Path) -> bool:
    return any(name in script.read_text() for name in FITTING)


def instances(script: str, per_fit: set[str]) -> int:
    return 2 if script in per_fit else 1


def per_fit_stages(root: Path) -> set[str]:
    import yaml

    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name for name, stage in stages.items() if "foreach" in stage}


def measure(root: Path, script: Path, fits: bool, repeat: int, env: dict[str, str]) -> dict[str, float]:
    best: dict[str, float] = {}
    tracks = "tracks" if "stage_run" in script.read_text() else "-"  # an evaluation block opens no run
    for _ in range(repeat):
        done = subprocess.run([sys.executable, "-c", CHILD, str(script), "fits" if fits else "-", tracks], cwd=root,
                              env=env, capture_output=True, text=True, check=True)
        times = json.loads(done.stdout.strip().splitlines()[-1])
        best = {k: min(v, best.get(k, v)) for k, v in times.items()}
    return best


def interpreter(repeat: int) -> float:
    import time

    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def checkout(root: Path, repeat: int) -> dict[str, dict[str, float]]:
    store = Path(tempfile.mkdtemp()) / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "DVC_NO_ANALYTICS": "1"}
    found = {}
    for script in sorted((root / "stages").glob("*.py")):
        found[script.stem] = measure(root, script, fits_something(script), repeat, env)
    return found


def table(name: str, root: Path, times: dict[str, dict[str, float]], start: float) -> tuple[str, float]:
    per_fit = per_fit_stages(root)
    rows, total = [], 0.0
    for stage, t in times.items():
        n = instances(stage, per_fit)
        each = start + t["imports"] + t["tracking"] + t["optimizer"]
        total += n * each
        rows.append(f"| {stage}{'@<fit>' if stage in per_fit else ''} | {n} | {t['imports']:.2f} | "
                    f"{t['tracking']:.2f} | {t['optimizer']:.2f} | {each:.2f} |")
    head = (f"**{name}** (`{root}`), {len(times)} scripts, {sum(instances(s, per_fit) for s in times)} stage "
            f"runs for two fits\n\n| stage | runs | imports s | MLflow run s | first Adam step s | before the first "
            f"useful line s |\n|---|---|---|---|---|---|\n")
    return head + "\n".join(rows) + f"\n\nTotal before the first useful line, every stage run: {total:.1f} s\n", total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]), help="the checkout to measure")
    parser.add_argument("--baseline", help="another checkout (another commit), measured in the same run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", help="write the Markdown result here too")
    args = parser.parse_args()
    start = interpreter(args.repeat)
    text = (f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores. Command: `python bench/stage_start.py "
            f"{' '.join(sys.argv[1:])}`. Interpreter start (`python -c pass`): {start:.2f} s, in every stage.\n\n")
    repo = Path(args.repo).resolve()
    mine, total = table("this checkout", repo, checkout(repo, args.repeat), start)
    text += mine
    if args.baseline:
        base = Path(args.baseline).resolve()
        theirs, base_total = table("baseline", base, checkout(base, args.repeat), start)
        text += "\n" + theirs + f"\nThis checkout pays {total - base_total:+.1f} s against the baseline " \
                                f"({total / base_total:.2f}x).\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
