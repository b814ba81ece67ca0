"""Stages running side by side share the cores instead of each taking all of them."""

import subprocess

import pytest
import torch

from latentfit.core import runtime
from latentfit.core.errors import ParamsError


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "RUNNING", tmp_path / "running")
    monkeypatch.delenv("LATENTFIT_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield tmp_path / "running"
    torch.set_num_threads(before)


def test_two_stages_side_by_side_take_half_the_cores_each(registry):
    neighbour = subprocess.Popen(["sleep", "60"])
    try:
        with runtime.registered():
            assert runtime.share_cpus() == runtime.machine_cores()  # alone: every core
            (registry / str(neighbour.pid)).touch()  # another stage starts beside this one
            assert runtime.running_stages() == 2
            assert runtime.share_cpus() == max(1, runtime.machine_cores() // 2) == torch.get_num_threads()
            neighbour.kill()
            neighbour.wait()
            assert runtime.running_stages() == 1, "a stage that died is forgotten"
            assert not (registry / str(neighbour.pid)).exists()
            assert runtime.share_cpus() == runtime.machine_cores()
        assert list(registry.iterdir()) == [], "a stage that ends leaves the registry"
    finally:
        neighbour.kill()


def test_the_share_is_the_cores_over_the_stages_and_never_zero(registry, monkeypatch):
    """On 8 cores three stages get 2 threads each; on 3 cores 1 each; on 1 core still 1, not 0."""
    neighbours = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        with runtime.registered():
            for pid in (n.pid for n in neighbours):
                (registry / str(pid)).touch()
            for cores, threads in ((8, 2), (3, 1), (1, 1)):
                monkeypatch.setattr(runtime, "machine_cores", lambda cores=cores: cores)
                assert runtime.share_cpus() == threads == torch.get_num_threads()
    finally:
        for n in neighbours:
            n.kill()
            n.wait()


def test_latentfit_threads_overrides_the_share(registry, monkeypatch):
    monkeypatch.setenv("LATENTFIT_THREADS", "1")
    assert runtime.share_cpus() == 1 == torch.get_num_threads()
    monkeypatch.delenv("LATENTFIT_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets for a task of one CPU
    assert runtime.share_cpus() == 1
    monkeypatch.setenv("LATENTFIT_THREADS", "two")
    with pytest.raises(ParamsError, match="LATENTFIT_THREADS='two' must be a whole number"):
        runtime.share_cpus()
