"""What the e2e tests share: a user's repository of this checkout's pipeline, driven through the real
`git` and `dvc` commands, and the small params every stage runs on."""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml

from latentfit.visualize.panels import expected

ROOT = Path(__file__).resolve().parents[2]
FIGURES = expected(z_dim=20)  # the registry's figures (visualize/panels.FIGURES) of a run with a 20-d latent
HEADLINE = ["train.vae", "train.direct", "ais.vae", "ais.direct", "ais.gap", "iwae.vae",
            "iwae.direct", "iwae.gap", "nelbo.vae", "prior.direct"]
BLOCKS = ["likelihood", "figure_data", "evaluate"]  # per fit, after train@<fit>
STAGES = ["download", "preprocess", "train@vae", "train@direct", "reference",
          *[f"{block}@{fit}" for fit in ("vae", "direct") for block in BLOCKS], "visualize"]
# the stages with an MLflow run each: likelihood@<fit>'s numbers are logged by its fit's evaluate@<fit>
TRACKED = [s for s in STAGES if s.split("@")[0] not in ("likelihood", "figure_data")]
SMALL = {  # every stage runs for real, on little data
    "preprocess": {"train_limit": 600, "test_limit": 300},
    "fits": {"vae": {"kind": "vae", "epochs": 2, "batch_size": 64},
             "direct": {"kind": "direct", "epochs": 2, "batch_size": 64}},
    "evaluate": {"prior_mc_samples": 500, "prior_mc_curve": [10, 100], "search_candidates": 500,
                 "denoise_images": 40, "iwae_samples": 100, "iwae_images": 300, "encoder_epochs": 2,
                 "classifier_epochs": 1, "fid_samples": 200, "silhouette_points": 100, "ais_images": 30,
                 "ais_chains": 4, "ais_steps": 30, "ais_curve_steps": [10], "ais_curve_images": 10, "bdmc_images": 10,
                 "gap_train_images": 30, "gap_steps": 50, "gap_eval_samples": 200},
    "visualize": {"search_candidates": 500, "tsne_points": 120},
    "device": "cpu",
}


class Repo:
    def __init__(self, path: Path):
        self.path = path
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@localhost",
                    "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@localhost"}
        self.env.pop("MLFLOW_TRACKING_URI", None)

    def run(self, *args: str) -> str:
        # Output goes to a file, not a pipe: `dvc queue start` returns at once but its detached workers
        # inherit the command's stdout, and reading a pipe to its end would wait for them to exit.
        with tempfile.TemporaryFile("w+") as out:
            done = subprocess.run(args, cwd=self.path, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                  text=True, timeout=900, check=False)
            out.seek(0)
            output = out.read()
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{output}"
        return output

    def dvc(self, *args: str) -> str:
        return self.run(sys.executable, "-m", "dvc", *args)

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message)

    def set_params(self, **sections) -> None:
        params = yaml.safe_load((self.path / "params.yaml").read_text())
        for section, values in sections.items():
            if section == "fits":  # each fit's entry updated key by key: the keys not given keep params.yaml's
                for fit, keys in values.items():
                    params["fits"].setdefault(fit, {}).update(keys)
            elif isinstance(values, dict):
                params[section].update(values)
            else:
                params[section] = values
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def json(self, path: str) -> dict:
        return json.loads((self.path / path).read_text())

    def json_at(self, rev: str, path: str) -> dict:
        return json.loads(self.run("git", "show", f"{rev}:{path}"))


def new_repo(path: Path) -> Repo:
    """A git + DVC repository at `path` with this checkout's pipeline (nothing committed yet)."""
    for item in ("src", "stages", "dvc.yaml", "params.yaml", ".gitignore"):
        copy = shutil.copytree if (ROOT / item).is_dir() else shutil.copy
        copy(ROOT / item, path / item, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    repo = Repo(path)
    repo.run("git", "init", "-q")
    repo.dvc("init", "-q")
    repo.dvc("config", "core.analytics", "false")
    shutil.copytree(ROOT / ".dvc" / "plots", path / ".dvc" / "plots")  # the plot templates dvc.yaml names
    return repo


def show_in_terminal(repo: Repo, args: list[str], columns: int = 160, rows: int = 50, timeout: float = 120) -> str:
    """Run `args` in a pseudo-terminal of `columns` x `rows`, as a person would in a terminal window
    (so DVC pipes a table through its pager, less -S); quit the pager and return the screen's text."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    env = {k: v for k, v in repo.env.items() if k not in ("COLUMNS", "LINES", "PAGER", "DVC_PAGER", "LESS")}
    env["TERM"] = "xterm"
    pid, fd = pty.fork()
    if pid == 0:  # the child: size its terminal, then become the command
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        os.chdir(repo.path)
        os.execvpe(args[0], args, env)
    out, deadline, quit_sent = b"", time.time() + timeout, False
    while time.time() < deadline:
        if select.select([fd], [], [], 1)[0]:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:  # the command exited
                break
            if not chunk:
                break
            out += chunk
        if b"(END)" in out and not quit_sent:  # the pager waits at the end of the table
            os.write(fd, b"q")
            quit_sent = True
    os.waitpid(pid, 0)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r", "", out.decode(errors="replace"))


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w@]+)'", output))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(args: list[str], ready: str, log: Path, **popen) -> Iterator[None]:
    """Run a server (`args`) until the block ends; enter the block once GET `ready` answers. A server that
    exits or takes over 3 minutes fails the test with its log."""
    with open(log, "w") as out:
        server = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(ready, timeout=5):
                    break
            except OSError:
                assert server.poll() is None and time.time() < deadline, log.read_text()
                time.sleep(1)
        yield
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
