"""The pipeline's files: atomic output (a file appears whole under its final name, or not at all),
and the prepared splits every stage after preprocess reads."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
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
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds.

    The old directory is renamed aside (`.NAME.old-PID`), the new one renamed in, and only then is the aside
    removed: at every step `path` is the whole old directory or the whole new one, never a mix or a part.
    An error or interruption (Ctrl-C, SIGTERM) in the block or in the replacement leaves the old one in place.
    Only a process killed outright (SIGKILL, power loss) in the instant between the two renames leaves no
    `path`, its old directory whole beside it: the next atomic_dir call on `path` (or `restore_dir`) renames
    it back first. Each call also removes what killed earlier calls on `path` left behind. One writer per
    path at a time (DVC locks a stage's outputs); leftovers of a process still running are left alone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    restore_dir(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    aside = path.parent / f".{path.name}.old-{os.getpid()}"
    try:
        yield tmp
        try:
            if path.exists():
                os.rename(path, aside)  # (1) the old one aside, whole: `path` is missing until (2)
            os.replace(tmp, path)  # (2) the new one in, whole
        except BaseException:
            if aside.exists() and not path.exists():
                os.rename(aside, path)  # stopped between (1) and (2): the old one back
            raise
        shutil.rmtree(aside, ignore_errors=True)  # (3) only now; if stopped, the next call removes the rest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def restore_dir(path: str | Path) -> None:
    """Undo what atomic_dir calls on `path` that were killed left behind: if `path` is missing and its old
    directory was renamed aside, rename it back (that replacement never completed); remove the rest."""
    path = Path(path)
    asides, temporaries = _leftovers(path)
    if asides and not os.path.lexists(path):
        os.rename(asides.pop(), path)  # there is one at most: every call restores before it moves one aside
    for leftover in asides + temporaries:
        shutil.rmtree(leftover, ignore_errors=True)


def _leftovers(path: Path) -> tuple[list[Path], list[Path]]:
    """The asides and temporaries of atomic_dir calls on `path` by processes that have ended, or by this
    one (an earlier call, interrupted); temporaries without a PID are an older version's."""
    import psutil  # here, not at the top: only atomic_dir needs it (os.kill(pid, 0) would end a process on Windows)

    name = re.compile(rf"\.{re.escape(path.name)}\.(?:old-(\d+)|(?:(\d+)-)?[a-z0-9_]+\.tmp)")
    asides: list[Path] = []
    temporaries: list[Path] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(path.parent):
            match = name.fullmatch(entry.name)
            if match is None or not entry.is_dir(follow_symlinks=False):
                continue
            pid = match[1] or match[2]
            if pid is None or int(pid) == os.getpid() or not psutil.pid_exists(int(pid)):
                (asides if match[1] else temporaries).append(Path(entry.path))
    return sorted(asides), sorted(temporaries)


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
