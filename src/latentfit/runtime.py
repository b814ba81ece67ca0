"""What every stage does first and last: pick the device, seed, resume, and fail with a clear message."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .config import ParamsError
from .data import DataError
from .io import save_torch
from .tracking import TrackingError
from .training import TrainingError

USER_ERRORS = (ParamsError, DataError, TrainingError, TrackingError)


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
            except USER_ERRORS as err:
                print(f"\n{stage}: error: {err}", file=sys.stderr)
                sys.exit(1)

        return run

    return wrap


class Checkpoint:
    """Per-epoch training state (weights, optimiser, RNG, history) for resuming an interrupted stage.

    `key` identifies the params the state belongs to: a checkpoint written under other params is
    stale and is discarded rather than resumed.
    """

    def __init__(self, path: str | Path, key: dict[str, Any], model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, generator: torch.Generator):
        self.path, self.key = Path(path), key
        self.model, self.optimizer, self.generator = model, optimizer, generator

    def resume(self) -> list[dict]:
        """Restore the saved state in place; returns the epoch history so far ([] when starting afresh)."""
        if not self.path.is_file():
            return []
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - a damaged checkpoint is only a lost head start
            state = None
        if not state or state.get("key") != self.key:
            print(f"discarding stale checkpoint {self.path} (written under other params)", file=sys.stderr)
            self.clear()
            return []
        self.model.load_state_dict(state.pop("model"))
        self.optimizer.load_state_dict(state.pop("optimizer"))
        self.generator.set_state(state.pop("generator"))
        history = state.pop("history")
        print(f"resuming after epoch {len(history)} from {self.path}", file=sys.stderr)
        return history

    def save(self, history: list[dict]) -> None:
        save_torch(self.path, {"key": self.key, "model": self.model.state_dict(),
                               "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                               "history": history})

    def clear(self) -> None:
        if self.path.exists():
            os.unlink(self.path)


def run_epochs(records, *, history: list[dict], run, checkpoint: Checkpoint, total: int, desc: str,
               line: Callable[[dict], str]) -> list[dict]:
    """Drive an epoch loop: log each record to MLflow, checkpoint it, print the notebook-style line."""
    from tqdm import tqdm

    for record in history:  # epochs restored from a checkpoint belong to this run's history too
        run.log_epoch(record)
    with tqdm(total=total, initial=len(history), desc=desc, unit="epoch", leave=False) as bar:
        for record in records:
            history.append(record)
            run.log_epoch(record)
            checkpoint.save(history)
            tqdm.write(line(record))
            bar.update()
    return history
