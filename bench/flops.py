"""Benchmark: achieved FLOP/s of a VAE epoch, a direct-fit epoch and an AIS transition against this machine's
own matmul peak, at the workloads' very shapes and at a large square product (2048^3), in one run.

    python bench/flops.py --out bench/results-flops-cpu.md
    python bench/flops.py --profile     # where each workload's time goes, op by op (torch.profiler)

Model f(z) = B ReLU(A z + a) + b with d = 20 latents, H = 400 hidden units, D = 784 pixels; the VAE's
encoder is D -> H -> 2d (mu and logvar from one head). Only matrix products are counted, 2 m k n FLOPs for
an (m x k) @ (k x n) product; the elementwise work (ReLU, softplus, sigmoid, BCE, KL, Adam) is not, so an
achieved rate below the matmul rate is time spent outside the matmuls. A linear layer on r rows, k -> n,
costs 2 r k n forward and the same again for each of its backward products, dW = dY^T X and dX = dY W;
dX is skipped where the input needs no gradient (the data, and prior draws), so training is ~3x forward:

    VAE step (batch b = 128, ELBO with L = 1):
        forward  2 b (D H + 2 d H + d H + H D)
        backward 2 b (D H + 2 * 2 d H + 2 d H + 2 H D)     (no dX for the encoder's first layer)
        = 2 b (5 D H + 9 d H) = 0.420 GFLOP per step, 80 steps per epoch of 10240 images
    direct step (batch b = 256, M = 64 prior draws; log p(y_b | z_m) = Y @ L^T - softplus(L).sum(-1)):
        decoder on the M draws: forward 2 M (d H + H D), backward 2 M (d H + 2 H D)   (no dX for z)
        Y @ L^T, a linear layer with weight L: forward 2 b D M, backward dL: 2 b D M
        = 2 (2 M d H + 3 M H D + 2 b D M) = 0.174 GFLOP per step, 40 steps per epoch
    AIS transition (100 images x 10 chains, 8 counted + 2 pilots: r = 1000 rows; 5 leapfrog steps):
        one gradient evaluation per leapfrog step (the last also returns log p(y | z) from the same logits);
        each is two products forward (z A^T, h B^T) and two back ((y - sigmoid(f)) B, then times A):
        = 5 * 2 r (2 d H + 2 H D) = 6.43 GFLOP per transition

Each workload runs through the project's own code (fit_vae, fit_direct, ais_log_prob) on synthetic data
(uniform random images; timings do not depend on pixel values). The AIS call runs `--ais-steps`
distributions, i.e. steps - 1 transitions plus one first gradient evaluation, which is counted in its FLOPs
and amortised over the transitions. Every product of the count is then timed alone by torch.matmul (float32,
both operands contiguous: the layers' transposed weights are not reproduced; called from Python like the
workloads call it) at the same threads: a workload's "same-shape peak" is its FLOPs over the summed time of
its products alone, so "of same-shape" is the share of its time that its matmuls would take by themselves.
The 2048^3 product is the machine's practical peak. Times are the best of --repeat rounds; the rounds
alternate the thread counts, so a slow spell of the VM hits all of them. The header says how many cores
other processes kept busy meanwhile: on a shared 2-core VM that, not the code, can halve a 2-thread rate.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import cpu_name
from latentfit.fitting.loops import fit_direct, fit_vae, make_optimizer
from latentfit.inference.ais import Schedule, ais_log_prob
from latentfit.model.networks import VAE, Decoder

Z, H, D = 20, 400, 784
VAE_BATCH, DIRECT_BATCH, DRAWS = 128, 256, 64
AIS_IMAGES, AIS_CHAINS, LEAPFROG = 100, 8, 5  # plus Schedule's 2 pilot chains per image
PEAK = (2048, 2048, 2048)

Shape = tuple[int, int, int]  # (m, k, n): an (m x k) @ (k x n) product


def linear(rows: int, k: int, n: int, input_grad: bool = True) -> list[Shape]:
    """The products of a trained linear layer k -> n on `rows` rows: forward, dW, and dX if its input needs one."""
    return [(rows, k, n), (n, rows, k)] + ([(rows, n, k)] if input_grad else [])


def vae_step() -> list[Shape]:
    b = VAE_BATCH
    return linear(b, D, H, input_grad=False) + linear(b, H, 2 * Z) + linear(b, Z, H) + linear(b, H, D)


def direct_step() -> list[Shape]:
    return linear(DRAWS, Z, H, input_grad=False) + linear(DRAWS, H, D) + linear(DIRECT_BATCH, D, DRAWS, False)


def gradient_evaluation(rows: int) -> list[Shape]:
    """AIS's hand-written log p(y | z) and gradient: z A^T, h B^T, then (y - sigmoid(f)) B and times A."""
    return [(rows, Z, H), (rows, H, D), (rows, D, H), (rows, H, Z)]


def gflop(shapes: list[Shape]) -> float:
    return sum(2 * m * k * n for m, k, n in shapes) / 1e9


@dataclass
class Workload:
    name: str
    units: int  # units per call of `run`: one epoch, or ais_steps - 1 transitions
    shapes: list[Shape]  # the products of one call
    run: Callable[[], object]


def workloads(images: int, ais_steps: int) -> list[Workload]:
    """The three workloads on synthetic data, each through the project's own code."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(images, D, generator=g)
    vae = VAE(Z, H, D)
    vae_opt = make_optimizer(vae, 1e-3)
    decoder, ais_decoder = Decoder(Z, H, D), Decoder(Z, H, D)
    direct_opt = make_optimizer(decoder, 1e-3)
    draws = torch.randn(DRAWS, Z, generator=g)
    schedule = Schedule(steps=ais_steps, leapfrog=LEAPFROG)
    rows = (AIS_CHAINS + schedule.pilots) * AIS_IMAGES
    return [
        Workload("VAE epoch", 1, vae_step() * (images // VAE_BATCH),
                 lambda: list(fit_vae(vae, vae_opt, x, epochs=1, batch_size=VAE_BATCH, generator=g))),
        Workload("direct-fit epoch", 1, direct_step() * (images // DIRECT_BATCH),
                 lambda: list(fit_direct(decoder, direct_opt, x, epochs=1, batch_size=DIRECT_BATCH,
                                         mc_samples=DRAWS, generator=g, fixed_draws=draws))),
        Workload("AIS transition", ais_steps - 1,
                 gradient_evaluation(rows) * ((ais_steps - 1) * LEAPFROG + 1),
                 lambda: ais_log_prob(ais_decoder, x[:AIS_IMAGES], chains=AIS_CHAINS, schedule=schedule,
                                      generator=g)),
    ]


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_seconds(shape: Shape, min_time: float = 0.05) -> float:
    """Seconds per torch.matmul call at `shape` (float32, both operands contiguous), over enough calls to last
    about `min_time`. Each result is dropped before the next call, so its memory is reused as in the workloads."""
    m, k, n = shape
    a, b = torch.rand(m, k), torch.rand(k, n)

    def loop(calls: int) -> None:
        for _ in range(calls):
            a @ b

    calls = max(1, min(5000, int(min_time / seconds(lambda: loop(3)) * 3)))
    return seconds(lambda: loop(calls)) / calls


def busy_seconds() -> float:
    """CPU seconds all processes on this machine have been busy since boot (Linux /proc/stat; 0 elsewhere)."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return 0.0
    jiffies = [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:]]
    return (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def measure(work: list[Workload], threads: list[int], repeat: int) -> tuple[dict, dict]:
    """Best seconds per (workload name, threads) call and per (shape, threads) product, rounds alternating."""
    shapes = sorted({s for w in work for s in w.shapes} | {PEAK})
    calls: dict[tuple[str, int], float] = {}
    products: dict[tuple[Shape, int], float] = {}
    for _ in range(repeat):
        for t in threads:
            torch.set_num_threads(t)
            for w in work:
                calls[w.name, t] = min(calls.get((w.name, t), float("inf")), seconds(w.run))
            for s in shapes:
                products[s, t] = min(products.get((s, t), float("inf")), matmul_seconds(s))
    return calls, products


def profile(work: list[Workload], rows: int = 12) -> None:
    """Print torch.profiler's ops by self CPU time for one call of each workload (after one untimed call)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    for w in work:
        w.run()
        with profiler(activities=[ProfilerActivity.CPU]) as prof:
            w.run()
        print(f"{w.name}, {torch.get_num_threads()} threads:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def workload_table(work: list[Workload], threads: list[int], calls: dict, products: dict) -> list[str]:
    rows = ["| workload | threads | GFLOP per unit | time per unit | achieved GFLOP/s | same-shape matmul GFLOP/s "
            "| of same-shape | of 2048³ peak |", "|---|---|---|---|---|---|---|---|"]
    for w in work:
        for t in threads:
            flop, spent = gflop(w.shapes), calls[w.name, t]
            alone = sum(products[s, t] for s in w.shapes)
            peak = gflop([PEAK]) / products[PEAK, t]
            rows.append(f"| {w.name} | {t} | {flop / w.units:.3f} | {spent / w.units * 1e3:.1f} ms | "
                        f"{flop / spent:.1f} | {flop / alone:.1f} | {alone / spent:.0%} | {flop / spent / peak:.0%} |")
    return rows


def matmul_table(work: list[Workload], threads: list[int], products: dict) -> list[str]:
    rows = ["| product m x k x n | used by | " + " | ".join(f"GFLOP/s, {t} thr" for t in threads) + " |",
            "|---|---|" + "---|" * len(threads)]
    for shape in sorted({s for w in work for s in w.shapes}, key=lambda s: s[0] * s[1] * s[2]) + [PEAK]:
        users = ", ".join(w.name for w in work if shape in w.shapes) or "practical peak"
        rates = " | ".join(f"{gflop([shape]) / products[shape, t]:.1f}" for t in threads)
        rows.append(f"| {' x '.join(map(str, shape))} | {users} | {rates} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10240, help="synthetic images per epoch (a multiple of 256)")
    parser.add_argument("--ais-steps", type=int, default=31, help="AIS distributions per timed call (steps - 1 transitions)")
    parser.add_argument("--threads", type=int, nargs="+", help="torch thread counts (default: torch's default, then 1)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best time of each measurement counts")
    parser.add_argument("--out", help="write the Markdown result here too")
    parser.add_argument("--profile", action="store_true", help="only print where each workload's time goes, by op")
    args = parser.parse_args()
    default = torch.get_num_threads()
    threads = args.threads or sorted({default, 1}, reverse=True)
    if args.images % DIRECT_BATCH or args.ais_steps < 2:
        parser.error("--images must be a multiple of 256 (whole batches) and --ais-steps at least 2")
    work = workloads(args.images, args.ais_steps)
    if args.profile:
        profile(work)
        return
    # another process on these cores halves a 2-thread rate: the header says how busy the others kept them
    start, busy, own = time.perf_counter(), busy_seconds(), time.process_time()
    calls, products = measure(work, threads, args.repeat)
    others = (busy_seconds() - busy - (time.process_time() - own)) / (time.perf_counter() - start)
    torch.set_num_threads(default)
    header = (f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
              f"(BLAS: {'MKL' if torch.backends.mkl.is_available() else 'not MKL'}), threads {threads} "
              f"(torch's default: {default}), float32; other processes kept {max(others, 0):.2f} cores busy "
              "during the run, on average.\n"
              f"Command: `{' '.join(['python bench/flops.py', *sys.argv[1:]])}`\n\n")
    table = (header + "\n".join(workload_table(work, threads, calls, products)) + "\n\n"
             + "\n".join(matmul_table(work, threads, products)) + "\n")
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
