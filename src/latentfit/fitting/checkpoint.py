"""Resumable epoch loops for the training stages: per-epoch checkpoints, MLflow logging, progress."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from latentfit.core.io import save_torch, write_csv
from latentfit.core.runtime import PROGRESS, share_cpus


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
        except Exception as err:  # noqa: BLE001 - a damaged checkpoint is only a lost head start
            return self._discard(f"unreadable: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
        if not isinstance(state, dict) or state.get("key") != self.key:
            return self._discard("written under other params")
        self.model.load_state_dict(state.pop("model"))
        self.optimizer.load_state_dict(state.pop("optimizer"))
        self.generator.set_state(state.pop("generator"))
        history = state.pop("history")
        print(f"resuming after epoch {len(history)} from {self.path}", file=sys.stderr)
        return history

    def _discard(self, why: str) -> list[dict]:
        print(f"discarding checkpoint {self.path} ({why}); training starts afresh", file=sys.stderr)
        self.clear()
        return []

    def save(self, history: list[dict]) -> None:
        save_torch(self.path, {"key": self.key, "model": self.model.state_dict(),
                               "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                               "history": history})

    def clear(self) -> None:
        if self.path.exists():
            os.unlink(self.path)


def run_epochs(records, *, history: list[dict], run, checkpoint: Checkpoint, total: int, desc: str,
               line: Callable[[dict], str], csv: str | Path) -> list[dict]:
    """Drive an epoch loop: log each record to MLflow, checkpoint it, write the history CSV a row longer
    (so live plots follow the run), print the notebook-style line."""
    from tqdm import tqdm

    PROGRESS["resume"] = str(checkpoint.path)
    PROGRESS["done"] = f"after epoch {len(history)} of {total}"
    for record in history:  # epochs restored from a checkpoint belong to this run's history too
        run.log_epoch(record)
    if history:
        write_csv(csv, history)
    with tqdm(total=total, initial=len(history), desc=desc, unit="epoch", leave=False) as bar:
        for record in records:
            history.append(record)
            run.log_epoch(record)
            checkpoint.save(history)
            PROGRESS["done"] = f"after epoch {len(history)} of {total}"
            write_csv(csv, history)
            tqdm.write(line(record))
            bar.update()
            share_cpus()  # a neighbour may have started or ended since the last epoch
    return history
