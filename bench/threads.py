"""Benchmark: do evaluate's blocks use the cores they are given? Two of its blocks on the clone's prepared data
and trained direct fit: AIS (100 test images, 8 chains, 60 distributions) and one epoch of the post-hoc encoder
(on the 10000 test images). Each runs in a fresh process with one thread, then with two; then both side by
side, two processes of one thread each. The reference is the same pair one after the other with two threads
each, as evaluate runs them today, measured in the same run.

    python bench/threads.py --repo /path/to/full-size-clone --out bench/results-threads-cpu.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import cpu_name

BLOCKS = ("ais", "encoder")


def block(repo: Path, name: str, threads: int) -> float:
    """Seconds of one block in this process, with `threads` torch threads (the clone's own latentfit)."""
    sys.path.insert(0, str(repo / "src"))
    import torch

    from latentfit.core.io import load_split
    from latentfit.fitting.loops import fit_vae, make_optimizer
    from latentfit.fitting.posthoc import posthoc_encoder
    from latentfit.inference.ais import Schedule, ais_log_prob
    from latentfit.model.files import load_decoder

    torch.set_num_threads(threads)
    decoder, _ = load_decoder(repo / "models/direct.pt")
    x = load_split(repo / "data/prepared/test.pt")["x"]
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    if name == "ais":
        ais_log_prob(decoder, x[:100], chains=8, schedule=Schedule(steps=60, leapfrog=5), generator=g)
    else:
        model = posthoc_encoder(decoder, decoder.fc1.out_features)
        list(fit_vae(model, make_optimizer(model.encoder, 1e-3), x, epochs=1, batch_size=128, generator=g))
    return time.perf_counter() - start


def spawn(repo: Path, name: str, threads: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--repo", str(repo), "--block", name, "--threads", str(threads)],
                            stdout=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", required=True, help="a clone that ran train_direct (models/direct.pt, data/prepared)")
    parser.add_argument("--block", choices=BLOCKS, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best time of each measurement counts")
    parser.add_argument("--out", help="write the Markdown result here too")
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    if args.block:
        print(f"{block(repo, args.block, args.threads):.3f}")
        return
    alone: dict[tuple[str, int], float] = {}
    side: dict[str, float] = {}
    together = float("inf")
    for _ in range(args.repeat):  # rounds alternate the settings, so a slow spell of the machine hits them all
        for t in (1, 2):
            for b in BLOCKS:
                alone[(b, t)] = min(alone.get((b, t), float("inf")), float(spawn(repo, b, t).communicate()[0]))
        pair = [spawn(repo, b, 1) for b in BLOCKS]
        seconds = dict(zip(BLOCKS, (float(p.communicate()[0]) for p in pair), strict=True))
        if max(seconds.values()) < together:
            side, together = seconds, max(seconds.values())
    serial = sum(alone[(b, 2)] for b in BLOCKS)
    table = (f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores. Command: `python bench/threads.py "
             f"{' '.join(sys.argv[1:])}`\n\n| block | 1 thread | 2 threads | speed-up | side by side, 1 thread |\n"
             "|---|---|---|---|---|\n"
             + "".join(f"| {b} | {alone[(b, 1)]:.2f} s | {alone[(b, 2)]:.2f} s | {alone[(b, 1)] / alone[(b, 2)]:.2f}x | "
                       f"{side[b]:.2f} s |\n" for b in BLOCKS)
             + f"\nOne after the other with two threads each: {serial:.2f} s; side by side with one thread each: "
               f"{together:.2f} s ({together / serial:.2f} of it).\n")
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
