"""What every stage does first and last: take its share of the cores, pick the device, seed, and fail
with a clear message. torch is imported where it is used: a stage that runs no model (evaluate@<fit>'s
merge) starts without it (bench/results-stage-start-cpu.md)."""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import os
import platform
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    import torch

from latentfit.core.config import thread_override
from latentfit.core.errors import Interrupted, LatentfitError, ParamsError, raise_interrupted


def _user() -> str:
    """This user's name for a per-user path, on every system (getpass reads the environment, then pwd on POSIX)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # a container user with no name
        name = "user"
    return "".join(c if c.isalnum() else "_" for c in name)


# One file per running stage of this user on this machine (its pid): the queue's workers, a sweep's Ray
# tasks and a person's `dvc repro` all share the same cores, whatever repository they run in.
RUNNING = Path(tempfile.gettempdir()) / f"latentfit-stages-{_user()}"


def pick_device(name: str) -> torch.device:
    """`auto` -> cuda, then mps, then cpu; a named device that is absent is an error, not a fallback."""
    import torch

    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d in ("cuda", "mps", "cpu") if available[d])
    if not available[name]:
        raise ParamsError(f"device = {name!r} but this machine has no {name}; set device: auto or cpu")
    return torch.device(name)


def where(device: torch.device) -> dict[str, str]:
    """What a result ran on, for the record: the resolved device (`cuda`, not `auto`), its name (the GPU's, or
    the CPU's) and the torch version. CPU and CUDA draw different numbers from one seed, so every result
    that depends on the device says which it was."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        name = f"Apple MPS ({platform.machine()})"
    else:
        name = _cpu_name()
    return {"device": device.type, "device_name": name, "torch": torch.__version__}


def _cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else what the platform module says)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """Seed the global RNG (weight init) and return a generator for everything drawn afterwards."""
    import torch

    torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


def stream(seed: int, *names: str, device: torch.device | str = "cpu") -> torch.Generator:
    """The random stream of one block of work (`stream(seed, "vae", "ais")`: the VAE's AIS), seeded from a
    hash of the seed and the names that is the same in every process and on every machine, so that adding,
    removing or reordering a block or a fit moves no other block's draws. Seeds torch's global generator
    with it too: modules the block creates are initialised from it, not from whatever ran before."""
    import torch

    digest = hashlib.blake2b("/".join([str(seed), *names]).encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little") & (2**63 - 1)
    torch.manual_seed(value)
    return torch.Generator(device=device).manual_seed(value)


def machine_cores() -> int:
    """The cores this process may run on (a container's or Ray's limit, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def running_stages() -> int:
    """Stages running now on this machine (this one included), forgetting those that died."""
    alive = 0
    for mark in RUNNING.glob("*"):
        if not mark.name.isdigit():
            continue
        if psutil.pid_exists(int(mark.name)):  # a probe that sends nothing (os.kill(pid, 0) ends it on Windows)
            alive += 1
        else:
            mark.unlink(missing_ok=True)
    return max(alive, 1)


def share_cpus() -> int:
    """Size torch's and the BLAS libraries' thread pools to this stage's share of the cores: two stages side
    by side on two cores take one thread each, rather than each spinning two against the other (several
    times slower than one after the other). LATENTFIT_THREADS overrides it. Call it again between long
    steps: the share grows when a neighbour ends. Thread counts can move a result in its last digits."""
    threads = thread_override() or max(1, machine_cores() // running_stages())
    torch = sys.modules.get("torch")  # a stage that runs no model has not imported it, and need not
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)  # numpy, scipy and scikit-learn
    return threads


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """Count this process among the running stages for the duration of the block."""
    RUNNING.mkdir(parents=True, exist_ok=True)
    mark = RUNNING / str(os.getpid())
    mark.touch()
    try:
        yield
    finally:
        mark.unlink(missing_ok=True)


# Where the running stage has got to, for the line an interruption prints ("after epoch 4 of 40 ...").
PROGRESS: dict[str, str] = {}


def interrupted_message(stage: str, signum: int) -> str:
    """The one line an interrupted stage prints: where it stopped and how to go on."""
    name = signal.Signals(signum).name
    done, resume = PROGRESS.get("done"), PROGRESS.get("resume")
    stopped = f" {done}" if done else ""
    then = (f"`dvc repro` resumes from {resume}" if resume else
            "nothing was written as complete; `dvc repro` runs the stage again")
    return f"{stage}: interrupted by {name}{stopped}; {then}"


def fit_argument(stage: str, fits: Iterable[str]) -> tuple[str, str]:
    """A per-fit stage's fit (`python stages/<stage>.py FIT`, which `dvc repro <stage>@FIT` runs) and the
    stage's name as DVC calls it."""
    names, fit = list(fits), sys.argv[1] if len(sys.argv) == 2 else ""
    if fit not in names:
        raise ParamsError(f"usage: python stages/{stage}.py FIT, with FIT one of params.yaml's fits "
                          f"({', '.join(names)}; got {fit or 'nothing'}); `dvc repro {stage}@{names[0]}` runs it")
    return fit, f"{stage}@{fit}"


def stage_main(stage: str) -> Callable[[Callable[[], Any]], Callable[[], None]]:
    """Run a stage's main(); a user error prints one clear line and exits 1, an interruption (Ctrl-C, SIGTERM)
    one line saying where it stopped and how to resume, and exits 128 + the signal (130, 143); no traceback.
    Every output is written atomically, so an interrupted stage leaves nothing that looks complete."""

    def wrap(main: Callable[[], Any]) -> Callable[[], None]:
        @functools.wraps(main)
        def run() -> None:
            name = f"{stage}@{sys.argv[1]}" if len(sys.argv) == 2 else stage  # a per-fit stage: `train@vae`
            signal.signal(signal.SIGTERM, raise_interrupted)
            try:
                with registered():
                    share_cpus()
                    main()
            except LatentfitError as err:
                print(f"\n{name}: error: {err}", file=sys.stderr)
                sys.exit(1)
            except (KeyboardInterrupt, Interrupted) as err:
                signum = err.signum if isinstance(err, Interrupted) else int(signal.SIGINT)
                print(f"\n{interrupted_message(name, signum)}", file=sys.stderr)
                sys.exit(128 + signum)

        return run

    return wrap
