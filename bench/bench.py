"""Benchmark: the project's hot paths against the notebook's formulation, in one run, same data.

    python bench/bench.py --out bench/results-cpu.md            # CPU (threads: torch default)
    python bench/bench.py --device cuda --out bench/results-cuda.md

Each case runs in its own fresh process, so its peak memory is its own: on CPU the growth of the
process's peak resident set over its size after setup (Linux VmHWM, reset after setup), on CUDA
torch.cuda.max_memory_allocated. Times are wall clock, best of --repeat. Ratios are reference / project.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference
from latentfit.fitting.loops import fit_direct, fit_vae, make_optimizer
from latentfit.inference.ais import Schedule, ais_log_prob
from latentfit.inference.estimators import iwae_nll
from latentfit.inference.reconstruct import prior_search
from latentfit.model.networks import VAE, Decoder

AIS_IMAGES, AIS_CHAINS = 100, 8  # one batch of the evaluate stage (ais_batch_size)


def load_train(path: str, device: str) -> torch.Tensor:
    if Path(path).is_file():
        return torch.load(path, weights_only=True)["x"].to(device)
    print(f"{path} not found: using 60000 uniform random images (timings do not depend on pixel values)")
    return torch.rand(60000, 784, generator=torch.Generator().manual_seed(0)).to(device)


def setup(case: str, impl: str, x: torch.Tensor, device: str):
    """Build everything a case needs and return the workload as a closure."""
    torch.manual_seed(0)
    g = torch.Generator(device=device).manual_seed(0)
    if case == "vae_epoch":
        if impl == "reference":
            model = reference.NotebookVAE().to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            return lambda: reference.vae_epoch(model, opt, x)
        model = VAE().to(device)
        opt = make_optimizer(model, 1e-3)
        return lambda: list(fit_vae(model, opt, x, epochs=1, batch_size=128, generator=g))
    if case == "direct_epoch":
        z = torch.randn(64, 20, generator=g, device=device)
        if impl == "reference":
            model = reference.NotebookDecoder().to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            return lambda: reference.direct_epoch(model, opt, x, z)
        model = Decoder().to(device)
        opt = make_optimizer(model, 1e-3)
        return lambda: list(fit_direct(model, opt, x, epochs=1, batch_size=256, mc_samples=64, generator=g,
                                       fixed_draws=z))
    if case == "prior_search":
        images, z = x[:8], torch.randn(20000, 20, generator=g, device=device)
        if impl == "reference":
            model = reference.NotebookDecoder().to(device)
            return lambda: reference.prior_search(model, images, z)
        model = Decoder().to(device)
        return lambda: torch.sigmoid(model(prior_search(model, images, z)))
    if case == "iwae":  # throughput: 200 test-sized images, k = 1000 importance samples each
        images = x[:200]
        if impl == "reference":
            model = reference.NotebookVAE().to(device)
            return lambda: reference.iwae_nll(model, images, 1000)
        model = VAE().to(device)
        return lambda: iwae_nll(model, images, 1000, g)
    if case == "ais":  # 100 test images, 8 chains each, 300 distributions x 5 leapfrog steps
        images = x[:AIS_IMAGES]
        if impl == "reference":
            model = reference.NotebookDecoder().to(device)
            return lambda: reference.ais_nll(model, images, AIS_CHAINS, 300, 5)
        model = Decoder().to(device)
        schedule = Schedule(steps=300, leapfrog=5)
        return lambda: ais_log_prob(model, images, chains=AIS_CHAINS, schedule=schedule, generator=g)
    raise ValueError(case)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _child(case: str, impl: str, args: argparse.Namespace, queue) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    x = load_train(args.data, args.device)
    work = setup(case, impl, x, args.device)
    cuda = args.device.startswith("cuda")
    best, peak = float("inf"), 0
    for _ in range(args.repeat):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current size
            base = _rss_kb("VmRSS:") * 1024
        start = time.perf_counter()
        work()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        high = torch.cuda.max_memory_allocated() if cuda else _rss_kb("VmHWM:") * 1024
        peak = max(peak, high - base)
    queue.put((best, peak))


def measure(case: str, impl: str, args: argparse.Namespace) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(case, impl, args, queue))
    proc.start()
    while True:  # a case that crashes says so instead of leaving the parent waiting
        try:
            result = queue.get(timeout=5)
            break
        except Exception:  # noqa: BLE001 - queue.Empty: still running, or dead
            if not proc.is_alive():
                raise RuntimeError(f"bench case {case} ({impl}) exited with code {proc.exitcode}") from None
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/prepared/train.pt", help="prepared training split")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="fresh runs per case and side, alternating; the best time counts")
    parser.add_argument("--cases", nargs="+", default=["direct_epoch", "vae_epoch", "prior_search", "iwae", "ais"])
    parser.add_argument("--out", help="write the Markdown table here too")
    args = parser.parse_args()

    mb = 1 / 2**20
    rows = ["| case | reference s | project s | speed-up | reference peak MiB | project peak MiB | memory ratio |",
            "|---|---|---|---|---|---|---|"]
    notes = []
    once = argparse.Namespace(**{**vars(args), "repeat": 1})
    for case in args.cases:
        # each run in a fresh process, the two sides alternating: this VM's speed drifts by a third between
        # runs, and the best of `repeat` fresh runs per side compares like with like
        runs = [(measure(case, "reference", once), measure(case, "project", once)) for _ in range(args.repeat)]
        (ref_s, ref_mem), (new_s, new_mem) = (min(side, key=lambda r: r[0]) for side in zip(*runs, strict=True))
        rows.append(f"| {case} | {ref_s:.3f} | {new_s:.3f} | {ref_s / new_s:.1f}x | {ref_mem * mb:.1f} | "
                    f"{new_mem * mb:.1f} | {ref_mem / max(new_mem, 1):.1f}x |")
        print(rows[-1], flush=True)
        if case == "ais":
            per = 1e3 / (AIS_IMAGES * AIS_CHAINS)
            notes.append(f"AIS per image and chain (300 distributions x 5 leapfrog steps): project {new_s * per:.1f} ms "
                         f"(pilot chains included), reference {ref_s * per:.1f} ms.")
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name()
    header = (f"Machine: {device}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
              f"{args.threads or torch.get_num_threads()} threads, device `{args.device}`, data `{args.data}`.\n"
              f"Command: `python bench/bench.py {' '.join(sys.argv[1:])}`\n\n")
    table = header + "\n".join(rows) + "\n" + "".join(f"\n{note}\n" for note in notes)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
