"""Where users run it: no float64 tensor anywhere (Apple's MPS has none), nothing POSIX-only outside a guarded
branch (Windows), and every result saying which device it ran on."""

import ast
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from latentfit.core.config import parse_params
from latentfit.core.runtime import pick_device, stream, where
from latentfit.core.stats import CompensatedSum
from latentfit.evaluation.reference import reference
from latentfit.evaluation.schema import RanOn
from latentfit.inference.ais import Schedule
from tests.blocks import evaluate_fit
from tests.test_evaluation import TINY, split, trained_fits

SRC = Path(__file__).resolve().parents[1] / "src" / "latentfit"


class NoFloat64(TorchDispatchMode):
    """Fails on any torch operation that takes or makes a float64 tensor, on any device."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves((args, kwargs, out)):
            if isinstance(value, torch.Tensor) and value.dtype == torch.float64:
                raise AssertionError(f"{func} takes or makes a float64 tensor: MPS has none")
        return out


def test_the_guard_catches_float64():
    with pytest.raises(AssertionError, match="float64"), NoFloat64():
        torch.ones(3).double().sum()


def test_training_and_a_small_evaluate_make_no_float64_tensor(tmp_path):
    params = parse_params(TINY)
    train, test = split(300, 1), split(120, 2)
    with NoFloat64():
        fits = trained_fits()
        _, classifier, ref_stats = reference(train, test, params.evaluate, stream(0, "reference"))
    with NoFloat64():
        for fit in (fits["vae"], fits["direct"]):
            result = evaluate_fit(fit, train, test, params, tmp_path, classifier=classifier, reference=ref_stats)
    assert result.scores.anatomy is not None  # the anatomy ran too


def test_the_compensated_sum_keeps_what_float32_addition_loses():
    torch.manual_seed(0)
    terms = -torch.rand(300, 64) * 3  # AIS's increments: hundreds of small negative terms per chain
    exact = terms.double().sum(0)
    running = CompensatedSum(torch.zeros(64))
    for t in terms:
        running.add_(t)
    naive = torch.zeros(64)
    for t in terms:  # left to right in float32, as AIS added before
        naive += t
    ulp = torch.finfo(torch.float32).eps * 2 ** torch.floor(torch.log2(exact.abs()))  # float32's spacing there
    assert ((running.total.double() - exact).abs() <= ulp / 2).all()  # exact to float32's last bit
    assert ((naive.double() - exact).abs() > 2 * ulp).any()  # plain float32 addition drifts further


def test_the_annealing_schedule_is_geometric_and_ends_at_one():
    betas = Schedule(steps=5, beta_min=1e-4).beta_values()
    assert betas[0] == 0.0 and betas[1] == pytest.approx(1e-4) and betas[-1] == 1.0 and len(betas) == 6
    assert all(b / a == pytest.approx(10.0) for a, b in zip(betas[1:-1], betas[2:], strict=True))
    assert Schedule(steps=1).beta_values() == [0.0, 1.0]


# modules and calls that exist only on POSIX (Windows has none of them, or os.kill(pid, 0) ends the process there)
POSIX_MODULES = {"fcntl", "pwd", "grp", "termios", "tty", "pty", "resource", "posix"}
POSIX_CALLS = {"os.getuid", "os.geteuid", "os.getgid", "os.kill", "os.killpg", "os.getpgid", "os.setsid", "os.fork",
               "os.setpgrp", "signal.SIGKILL", "signal.SIGHUP", "os.sched_getaffinity"}


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside an `if`/conditional expression whose test asks for the platform (sys.platform, os.name, hasattr(os...))."""
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.If, ast.IfExp)):
            test = ast.unparse(node.test)
            if "sys.platform" in test or "os.name" in test or "hasattr(os" in test or "hasattr(signal" in test:
                return True
    return False


def posix_only_uses(path: Path, root: Path = SRC) -> list[str]:
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] in POSIX_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in POSIX_MODULES:
            names = [node.module or ""]
        elif isinstance(node, ast.Attribute) and ast.unparse(node) in POSIX_CALLS:
            names = [ast.unparse(node)]
        found += [f"{path.relative_to(root)}:{node.lineno}: {n}" for n in names if not _guarded(node, parents)]
    return found


def test_nothing_posix_only_outside_a_guarded_branch():
    uses = [use for path in sorted(SRC.rglob("*.py")) for use in posix_only_uses(path)]
    assert uses == [], "POSIX-only calls Windows lacks: use psutil / filelock, or guard them by platform"


def test_the_scan_finds_an_unguarded_call_and_passes_a_guarded_one(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os, fcntl\nos.kill(1, 0)\nif hasattr(os, 'killpg'):\n    os.killpg(1, 9)\n")
    uses = posix_only_uses(bad, tmp_path)
    assert [u.split(": ")[1] for u in uses] == ["fcntl", "os.kill"]


def test_the_record_says_which_device_and_torch():
    on = where(pick_device("cpu"))
    assert on["device"] == "cpu" and on["torch"] == torch.__version__ and on["device_name"]
    assert RanOn(**on).device == "cpu"
    auto = pick_device("auto")  # cuda, then mps, then cpu
    assert auto.type == ("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")


@pytest.mark.parametrize(("cuda", "mps", "auto"), [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu_and_an_absent_device_is_an_error(monkeypatch, cuda, mps, auto):
    from latentfit.core.errors import ParamsError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert pick_device("auto").type == auto and pick_device("cpu").type == "cpu"
    for absent in [name for name, there in (("cuda", cuda), ("mps", mps)) if not there]:
        with pytest.raises(ParamsError, match=f"no {absent}; set device: auto or cpu"):
            pick_device(absent)


BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the GPU script for real")
def test_the_gpu_script_says_it_skipped_without_a_gpu(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "results-pipeline-cuda.md"
    done = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--repo", str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "no CUDA device" in done.stdout and "skipped" in done.stdout
    assert not out.exists()


def test_the_gpu_script_checks_the_devices_agree_within_their_errors(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from gpu import agreement

    def details(ais, iwae):
        return {"fits": {"vae": {"test": {"ais_nll": ais, "ais_nll_se": 1.0, "iwae_nll": iwae, "iwae_nll_se": 0.5},
                                 "bdmc": {"gap": 0.5}}}}

    rows, ok = agreement(details(100.0, 101.0), details(103.0, 101.5))  # AIS within 3 x 1.41 + 1; IWAE within 2.1
    assert ok and len(rows) == 2
    _, ok = agreement(details(100.0, 101.0), details(100.0, 104.0))  # IWAE 3 apart, allowed 2.1
    assert not ok
