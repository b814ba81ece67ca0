"""atomic_dir interrupted at every step of the replacement: the target is always the whole old directory or
the whole new one (or, only after a hard kill between the two renames, missing with the old one whole beside
it, which the next call puts back before anything else), and the next call cleans up what was left."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latentfit.core.io import atomic_dir, restore_dir

OLD = {"a.txt": b"old a", "sub/b.txt": b"old b", "only-old.txt": b"old"}
NEW = {"a.txt": b"new a", "sub/b.txt": b"new b", "only-new.txt": b"new"}
NEWER = {"a.txt": b"newer a"}
# before: the step raises KeyboardInterrupt instead of running (Ctrl-C, or SIGTERM, which the stages raise
# like it); after: it runs, then raises (the signal came just after the system call returned); die: it and
# every later step never run (SIGKILL, power loss); partial: an rmtree removes one file, then the process dies.
MODES = ("before", "after", "die", "partial")


def write(directory: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(content)


def snapshot(directory: Path) -> dict[str, bytes] | None:
    """Every file under `directory` by its relative path, with its bytes (None: no directory)."""
    if not directory.exists():
        return None
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def instrument(monkeypatch: pytest.MonkeyPatch, at: int | None = None, mode: str = "before") -> list[str]:
    """Count os.rename, os.replace and shutil.rmtree in the order they are called; step `at` is interrupted
    as `mode` says. Returns the steps called so far."""
    calls: list[str] = []

    def wrap(module, name):
        real = getattr(module, name)

        def step(*args, **kwargs):
            i = len(calls)
            calls.append(name)
            if at is not None and (i == at and mode == "before" or i >= at and mode in ("die", "partial")):
                if i == at and mode == "partial" and name == "rmtree":
                    victim = next((p for p in Path(args[0]).rglob("*") if p.is_file()), None)
                    if victim is not None:
                        victim.unlink()
                raise KeyboardInterrupt(f"step {i}: {name}")
            result = real(*args, **kwargs)
            if i == at and mode == "after":
                raise KeyboardInterrupt(f"after step {i}: {name}")
            return result

        monkeypatch.setattr(module, name, step)

    for module, name in ((os, "rename"), (os, "replace"), (shutil, "rmtree")):
        wrap(module, name)
    return calls


def replace(target: Path, files: dict[str, bytes]) -> None:
    with atomic_dir(target) as tmp:
        write(tmp, files)


def steps_of_a_replacement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: dict | None) -> list[str]:
    target = tmp_path / "count" / "out"
    if old is not None:
        replace(target, old)
    with monkeypatch.context() as m:
        calls = instrument(m)
        replace(target, NEW)
    assert snapshot(target) == NEW
    return calls


def cases():
    # (old content, step, mode) for every step of a replacement of an existing directory and of a first write
    for old, steps in ((OLD, ["rename", "replace", "rmtree", "rmtree"]), (None, ["replace", "rmtree", "rmtree"])):
        for i, name in enumerate(steps):
            for mode in MODES:
                if mode != "partial" or name == "rmtree":
                    yield pytest.param(old, steps, i, mode, id=f"{'replace' if old else 'first'}-{i}-{name}-{mode}")


@pytest.mark.parametrize("old, steps, at, mode", list(cases()))
def test_an_interrupted_replacement_leaves_the_old_or_the_new_directory_whole(tmp_path, monkeypatch, old, steps, at,
                                                                             mode):
    assert steps_of_a_replacement(tmp_path, monkeypatch, old) == steps  # every step atomic_dir takes is tried
    target = tmp_path / "outs" / "out"
    if old is not None:
        replace(target, old)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        instrument(m, at, mode)
        replace(target, NEW)

    state = snapshot(target)
    leftovers = sorted(p.name for p in target.parent.iterdir() if p != target)
    if state is None and old is not None:
        # only a hard kill between the two renames: the old directory whole beside the target
        assert mode in ("die", "partial") and f".out.old-{os.getpid()}" in leftovers
        assert snapshot(target.parent / f".out.old-{os.getpid()}") == old
    else:
        assert state in (old, NEW), f"a mixed or partial directory: {state}"
    if mode in ("before", "after") and old is not None:
        assert state is not None  # the interrupted process itself puts the old one back

    # the next call first puts back the old directory, if that is what is missing, and removes the leftovers
    with atomic_dir(target) as tmp:
        assert snapshot(target) in (old, NEW) and snapshot(target) == (state if state is not None else old)
        write(tmp, NEWER)
    assert snapshot(target) == NEWER
    assert [p.name for p in target.parent.iterdir()] == ["out"]


def test_an_error_in_the_block_leaves_the_old_directory_untouched(tmp_path):
    target = tmp_path / "out"
    replace(target, OLD)
    for error in (RuntimeError("the stage failed"), KeyboardInterrupt()):
        with pytest.raises(type(error)), atomic_dir(target) as tmp:
            write(tmp, NEW)
            raise error
        assert snapshot(target) == OLD
        assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_first_write_that_fails_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        write(tmp, NEW)
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_restore_dir_puts_back_what_a_killed_replacement_moved_aside(tmp_path):
    """A reader may call it first: `path` missing with its old directory aside (a killed writer) is restored."""
    target = tmp_path / "out"
    aside = tmp_path / ".out.old-999999999"  # no such process
    write(aside, OLD)
    (tmp_path / ".out.999999999-abcd1234.tmp").mkdir()  # a killed writer's temporary
    (tmp_path / ".out.abcd1234.tmp").mkdir()  # an older version's (no PID)
    restore_dir(target)
    assert snapshot(target) == OLD and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_leftovers_of_a_running_process_and_other_names_are_left_alone(tmp_path):
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            unrelated = [".out.b.old-999999999", ".outer.old-999999999", "out.old-999999999"]
            keep = [tmp_path / f".out.old-{other.pid}", tmp_path / f".out.{other.pid}-abcd1234.tmp",
                    *(tmp_path / name for name in unrelated)]
            for path in keep:
                path.mkdir()
            replace(tmp_path / "out", NEW)
            replace(tmp_path / "out", NEWER)
            assert snapshot(tmp_path / "out") == NEWER
            assert sorted(tmp_path.iterdir()) == sorted([*keep, tmp_path / "out"])
        finally:
            other.kill()
    replace(tmp_path / "out", NEW)  # once that process has ended, its leftovers are removed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*unrelated, "out"])


def test_the_new_directory_has_the_permissions_of_any_new_directory(tmp_path):
    replace(tmp_path / "out", NEW)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask
