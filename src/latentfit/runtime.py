"""What every stage does first and last: pick the device, seed, and fail with a clear message."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import torch

from .errors import LatentfitError, ParamsError


def pick_device(name: str) -> torch.device:
    """`auto` -> cuda, then mps, then cpu; a named device that is absent is an error, not a fallback."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d in ("cuda", "mps", "cpu") if available[d])
    if not available[name]:
        raise ParamsError(f"device = {name!r} but this machine has no {name}; set device: auto or cpu")
    return torch.device(name)


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """Seed the global RNG (weight init) and return a generator for everything drawn afterwards."""
    torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


def stage_main(stage: str) -> Callable[[Callable[[], Any]], Callable[[], None]]:
    """Run a stage's main(); a user error prints one clear line and exits 1, with no traceback."""

    def wrap(main: Callable[[], Any]) -> Callable[[], None]:
        @functools.wraps(main)
        def run() -> None:
            try:
                main()
            except LatentfitError as err:
                print(f"\n{stage}: error: {err}", file=sys.stderr)
                sys.exit(1)

        return run

    return wrap
