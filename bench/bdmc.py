"""Benchmark: BDMC's gap before and after its reverse chain replays the forward run's step sizes, on the same
decoders and the same simulated images.

    python bench/bdmc.py --models /path/to/a/run/models --before 7b8416f --out bench/results-bdmc-cpu.md

For each decoder (`<fit>.pt` in --models, from a finished run) and each checkout (this one, and git revision
--before exported to a temporary directory), a fresh process runs `latentfit.inference.ais.bdmc` with the
evaluate params' schedule (--images simulated from the decoder, --chains, --steps, --leapfrog, --beta-min)
and the same seed: the same simulated images and, with every image in one batch, the same forward chains.
Only the reverse chain differs: before, its step sizes were steered by pilot chains started from the exact
posterior sample; after, it replays the forward run's. Reports both bounds, the gap with its standard
error over images, and the seconds each took.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import cpu_name

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from latentfit.inference.ais import Schedule, bdmc
from latentfit.model.files import load_decoder
a = json.loads(sys.argv[2])
torch.set_num_threads(a["threads"])
decoder, _ = load_decoder(a["model"])
start = time.perf_counter()
r = bdmc(decoder, a["images"], chains=a["chains"], schedule=Schedule(steps=a["steps"], leapfrog=a["leapfrog"],
         beta_min=a["beta_min"]), generator=torch.Generator().manual_seed(a["seed"]), batch_size=a["images"])
print(json.dumps(r | {"seconds": time.perf_counter() - start}))
"""


def run(src: Path, args: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(src), json.dumps(args)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"bdmc failed with {src}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="a finished run's models/ directory")
    ap.add_argument("--fits", default="vae,direct")
    ap.add_argument("--before", required=True, help="the git revision of the code before the change")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--chains", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--leapfrog", type=int, default=5)
    ap.add_argument("--beta-min", type=float, default=1e-5)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds: each a fresh set of images and chains")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--label", default="", help="what the models are, for the report")
    ap.add_argument("--out")
    o = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "before.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), o.before, "src"], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(Path(tmp) / "before", filter="data")
        for fit in o.fits.split(","):
            for seed in (int(s) for s in o.seeds.split(",")):
                args = {"model": str(Path(o.models) / f"{fit}.pt"), "images": o.images, "chains": o.chains,
                        "steps": o.steps, "leapfrog": o.leapfrog, "beta_min": o.beta_min, "seed": seed,
                        "threads": o.threads}
                before, after = run(Path(tmp) / "before" / "src", args), run(ROOT / "src", args)
                rows.append((fit, seed, before, after))
                print(fit, seed, f"before gap {before['gap']:.3f}, after gap {after['gap']:.3f}", flush=True)
    lines = [f"Machine: {cpu_name()}. Models: {o.label or o.models}. Schedule: {o.images} simulated images, "
             f"{o.chains} chains, {o.steps} distributions, {o.leapfrog} leapfrog steps, beta_min {o.beta_min}; "
             f"{o.threads} thread(s).",
             f"Command: `python bench/bdmc.py --models {o.models} --before {o.before} --seeds {o.seeds}"
             f"{' --label ' + repr(o.label) if o.label else ''}`", "",
             "| fit | seed | forward NLL (upper) | reverse NLL before | reverse NLL after | gap before | gap after "
             "| seconds before | seconds after |", "|---|---|---|---|---|---|---|---|---|"]
    for fit, seed, b, a in rows:
        same = "" if b["upper_nll"] == a["upper_nll"] else f" / {a['upper_nll']:.3f}"
        lines.append(f"| {fit} | {seed} | {b['upper_nll']:.3f}{same} | {b['lower_nll']:.3f} | {a['lower_nll']:.3f} "
                     f"| {b['gap']:.3f} ± {b['gap_se']:.3f} | {a['gap']:.3f} ± {a['gap_se']:.3f} "
                     f"| {b['seconds']:.1f} | {a['seconds']:.1f} |")
    lines += ["", "The forward chains are the same before and after (one NLL shown where equal to the last digit); "
              "a gap is reverse - forward in log p(y) per image, mean ± standard error over the images.", ""]
    text = "\n".join(lines)
    print(text)
    if o.out:
        with open(o.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
