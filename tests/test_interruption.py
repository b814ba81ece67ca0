"""A training stage killed with SIGKILL mid-run resumes on the next run and ends where an
uninterrupted run with the same seed ends; a params change discards the stale checkpoint."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from latentfit.core.io import save_split
from tests.synthetic import synthetic_split

pytestmark = pytest.mark.slow  # real stage processes, trained and interrupted: `pytest -m slow`
ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 8


def workdir(tmp_path: Path, name: str, **train_vae) -> Path:
    """A directory laid out like the repo: stages/, params.yaml, data/prepared/train.pt."""
    path = tmp_path / name
    shutil.copytree(ROOT / "stages", path / "stages")
    images, labels = synthetic_split(3000, seed=0)
    x = torch.from_numpy(images).reshape(len(images), -1).float() / 255
    save_split(path / "data/prepared/train.pt", {"x": x, "y": torch.from_numpy(labels).long()})
    # small batches: epochs of ~0.5 s leave a wide window to interrupt training itself
    params = {"fits": {"vae": {"kind": "vae", "epochs": EPOCHS, "batch_size": 8, **train_vae}},
              "model": {"hidden": 64}, "device": "cpu"}
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    return path


def stage(path: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{path / 'mlflow.db'}"}
    # A shell's background job (CI may run us as one) starts with SIGINT ignored, an ignored signal stays
    # ignored across exec, and Python then never raises KeyboardInterrupt. A handled one is reset to
    # the default on exec: handle it here while the stage starts.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "stages/train.py", "vae"], cwd=path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


def completed_epochs(path: Path) -> int:
    ckpt = path / "checkpoints/vae.pt"
    try:
        return len(torch.load(ckpt, weights_only=False)["history"]) if ckpt.exists() else 0
    except Exception:  # noqa: BLE001 - read while being replaced: try again
        return 0


def final_numbers(path: Path) -> dict:
    metrics = json.loads((path / "metrics/train/vae.json").read_text())
    return {k: v for k, v in metrics.items() if k != "seconds_per_epoch"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The final numbers of a run nobody interrupted (one for every signal below)."""
    reference = workdir(tmp_path_factory.mktemp("uninterrupted"), "reference")
    finish(stage(reference))
    return final_numbers(reference)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_killed_then_rerun_equals_an_uninterrupted_run(tmp_path, sig, uninterrupted):
    """SIGKILL cannot be caught; Ctrl-C (SIGINT) and SIGTERM end with one line, no traceback, 128 + signal."""
    victim = workdir(tmp_path, "victim")
    proc = stage(victim)
    deadline = time.time() + 300
    while completed_epochs(victim) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    # training must still be running: after the last epoch the stage writes its outputs and logs the model
    assert proc.poll() is None and completed_epochs(victim) < EPOCHS, "training ended before the kill: raise EPOCHS"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    if sig != signal.SIGKILL:
        assert proc.returncode == 128 + sig, out
        assert "Traceback" not in out, out
        last = out.strip().splitlines()[-1]
        assert last.startswith(f"train@vae: interrupted by {signal.Signals(sig).name} after epoch "), out
        assert last.endswith(f"of {EPOCHS}; `dvc repro` resumes from checkpoints/vae.pt"), out
    assert not (victim / "metrics/train/vae.json").exists() and not (victim / "models/vae.pt").exists()
    # a write cut short leaves at most a hidden temporary file, never a final name
    assert all(p.name.startswith(".") for p in victim.rglob("*.tmp"))

    out = finish(stage(victim))
    assert "resuming after epoch" in out
    assert final_numbers(victim) == uninterrupted
    assert len((victim / "plots/train/vae.csv").read_text().splitlines()) == EPOCHS + 1
    assert not (victim / "checkpoints/vae.pt").exists()


def test_changed_params_discard_the_checkpoint(tmp_path):
    path = workdir(tmp_path, "changed")
    proc = stage(path)
    while completed_epochs(path) < 1 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["fits"]["vae"]["lr"] = 0.002
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    out = finish(stage(path))
    assert "discarding checkpoint" in out and "other params" in out and "resuming" not in out


@pytest.fixture(autouse=True)
def _no_dvc_env(monkeypatch):
    for var in ("DVC_ROOT", "DVC_EXP_NAME", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)


def test_bad_params_stop_the_stage_before_any_work(tmp_path):
    path = workdir(tmp_path, "typo")
    (path / "params.yaml").write_text(yaml.safe_dump({"fits": {"vae": {"kind": "vae", "epoch": 3}}}))
    proc = stage(path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "train@vae: error: unknown key 'fits.vae.epoch'" in out and "Did you mean 'fits.vae.epochs'" in out
    assert "Traceback" not in out
    assert not (path / "checkpoints").exists() and not (path / "models").exists()


def test_divergence_stops_the_stage_and_writes_nothing_as_if_complete(tmp_path):
    path = workdir(tmp_path, "nan")
    split = torch.load(path / "data/prepared/train.pt", weights_only=True)
    split["x"][7, 100] = float("nan")
    save_split(path / "data/prepared/train.pt", split)
    proc = stage(path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "in epoch 1" in out and "lower fits.vae.lr" in out
    for output in ("models/vae.pt", "metrics/train/vae.json", "plots/train/vae.csv"):
        assert not (path / output).exists()
