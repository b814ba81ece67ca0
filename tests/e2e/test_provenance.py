"""A queued experiment computes with the code its snapshot records, not with the workspace's.

The user's set-up from the README: the package installed editable (`pip install -e .`), so a plain
`import latentfit` finds the workspace's src/. No PYTHONPATH anywhere."""

import io
import os
import re
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.e2e.helpers import SMALL, Repo, new_repo
from tests.synthetic import FileServer

pytestmark = pytest.mark.e2e


def editable_environment(repo: Repo, where: Path) -> Path:
    """A virtual environment whose `latentfit` is `repo`'s src/, as `pip install -e .` leaves it (a .pth
    line with the source directory), and whose other packages are this test run's. Returns its bin/."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    purelib = next(where.glob("lib/python*/site-packages"))
    (purelib / "__editable__.latentfit.pth").write_text(str(repo.path / "src") + "\n")
    # this run's packages (torch, dvc, ...), but not its own editable latentfit: a plain path line, not a site dir
    (purelib / "parent.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    return where / "bin"


def test_a_queued_experiment_runs_its_snapshot_not_the_workspace(tmp_path, synthetic_dir):
    repo = new_repo(tmp_path / "repo")
    repo.env.pop("PYTHONPATH", None)
    bin_dir = editable_environment(repo, tmp_path / "venv")
    repo.env["PATH"] = f"{bin_dir}{os.pathsep}{repo.env['PATH']}"
    python = str(bin_dir / "python")
    found = repo.run(python, "-c", "import latentfit.data.prepare as m; print(m.__file__)")
    assert found.strip() == str(repo.path / "src/latentfit/data/prepare.py"), "the package resolves to the workspace"

    with FileServer(synthetic_dir) as server:
        repo.set_params(data={"mirrors": [server.url], "verify": "shape"}, **SMALL)
        repo.commit("pipeline")
        repo.run(python, "-m", "dvc", "repro", "preprocess")
    repo.commit("data")
    # the README's queue workflow: queue, go on editing, start the queue
    repo.run(python, "-m", "dvc", "exp", "run", "--queue", "-n", "prov", "-S", "preprocess.train_limit=90", "preprocess")
    prepare = repo.path / "src/latentfit/data/prepare.py"
    committed = prepare.read_text()
    assert "div_(255.0)" in committed
    prepare.write_text(committed.replace("div_(255.0)", "div_(256.0)"))  # an edit nobody committed
    repo.run(python, "-m", "dvc", "queue", "start")
    deadline, status = time.time() + 300, ""
    while time.time() < deadline:
        status = repo.run(python, "-m", "dvc", "queue", "status")
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(2)
    assert re.search(r"\bSuccess\b", status), status + repo.run(python, "-m", "dvc", "queue", "logs", "prov")

    prepare.write_text(committed)
    (ref,) = repo.run("git", "for-each-ref", "--format=%(refname)", "refs/exps/").split()
    assert ref.endswith("/prov")
    import dvc.api

    with dvc.api.open("data/prepared/train.pt", repo=str(repo.path), rev=ref, mode="rb") as f:
        prepared = torch.load(io.BytesIO(f.read()), weights_only=True)["x"]
    assert len(prepared) == 90
    assert prepared.max().item() == 1.0, "pixels / 255, as the experiment's own prepare.py says, not / 256"
