"""The pipeline's files: atomic output (a file appears whole under its final name, or not at all),
and the prepared splits every stage after preprocess reads."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    import torch

from latentfit.core.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make outputs private to this user
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds, so an
    interrupted stage leaves the old directory whole (or none), never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_table(path: str | Path, frame: pd.DataFrame) -> None:
    """A table as CSV with every float at full precision (it reads back bit for bit)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def file_md5(path: str | Path) -> str:
    """The md5 of a file's bytes: what DVC records for a single-file output."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Rows as a CSV; `columns` names them even when there are no rows."""
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False, float_format="%.6g")


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save with every tensor moved to the CPU first, so a file written on a GPU loads on any machine."""
    import torch  # here, not at the top: `latentfit sweep` writes its text files without loading torch
    from torch.utils._pytree import tree_map

    with atomic_path(path) as tmp:
        torch.save(tree_map(lambda v: v.cpu() if isinstance(v, torch.Tensor) else v, obj), tmp)


def save_figure(path: str | Path, fig: Any) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_split(path: str | Path, split: dict[str, torch.Tensor]) -> None:
    """A prepared split: {"x": float32 N x 784 in [0, 1], "y": int64 labels}, and "dynamic" (True) on
    a training split that training binarises afresh each epoch."""
    save_torch(path, split)


def load_split(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing: run the preprocess stage first (`dvc repro preprocess`)")
    import torch

    split = torch.load(path, weights_only=True)
    if not {"x", "y"} <= set(split) <= {"x", "y", "dynamic"} or split["x"].ndim != 2:
        raise DataError(f"{path} is not a prepared split; re-run `dvc repro -f preprocess`")
    return split
