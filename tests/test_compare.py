"""`latentfit compare`: paired gaps between fits of different runs, from their per-image results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from latentfit.cli import main
from latentfit.core.errors import DataError
from latentfit.evaluation.across import paired_gaps, read_images


def write_images(directory, ais, iwae, labels, iwae_k=1000):
    """An evaluate stage's images.csv: AIS on the first len(ais) test images, IWAE on the first len(iwae), and a
    training-image row that must not be paired."""
    n = len(labels)
    directory.mkdir(parents=True)
    frame = pd.DataFrame({"split": "test", "image": np.arange(n), "label": labels})
    frame["ais"] = np.concatenate([ais, np.full(n - len(ais), np.nan)])
    frame[f"iwae_{iwae_k}"] = np.concatenate([iwae, np.full(n - len(iwae), np.nan)])
    frame["iwae_10"] = frame[f"iwae_{iwae_k}"] + 5.0
    train = pd.DataFrame({"split": ["train"], "image": [0], "label": [labels[0]], "ais": [1e6]})
    pd.concat([frame, train]).to_csv(directory / "images.csv", index=False)
    return directory


def test_gaps_pair_the_same_images_and_use_the_largest_shared_k(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 12)
    base_ais, base_iwae = rng.normal(230, 8, 6), rng.normal(232, 8, 10)
    extra = rng.normal(3.0, 0.5, 10)
    a = write_images(tmp_path / "a", base_ais, base_iwae, labels)
    b = write_images(tmp_path / "b", base_ais + extra[:6], base_iwae + extra, labels)
    gaps = paired_gaps({"base": read_images(a), "other": read_images(b)}).set_index("estimator")
    assert list(gaps.index) == ["ais", "iwae_1000"]  # the training row and iwae_10 left out
    assert gaps.loc["ais", "images"] == 6 and gaps.loc["iwae_1000", "images"] == 10
    assert gaps.loc["ais", "gap"] == pytest.approx(extra[:6].mean())
    assert gaps.loc["iwae_1000", "gap"] == pytest.approx(extra.mean())
    assert gaps.loc["ais", "se"] == pytest.approx(extra[:6].std(ddof=1) / np.sqrt(6))
    assert gaps.loc["ais", "lo"] < gaps.loc["ais", "gap"] < gaps.loc["ais", "hi"]
    assert gaps.loc["ais", "fit_nll"] == pytest.approx((base_ais + extra[:6]).mean())


def test_the_command_prints_each_fit_against_the_first(tmp_path, capsys):
    labels = np.arange(8) % 10
    ais = np.linspace(220, 240, 8)
    a = write_images(tmp_path / "a", ais, ais, labels)
    b = write_images(tmp_path / "b", ais + 2.0 + 0.1 * np.arange(8) % 3, ais + 4.0, labels)
    c = write_images(tmp_path / "c", ais - 1.0 + 0.2 * np.arange(8) % 2, ais - 1.5, labels, iwae_k=100)
    out_csv = tmp_path / "gaps.csv"
    assert main(["compare", f"VAE={a}", f"IWAE={b}", f"direct={c / 'images.csv'}", "--csv", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| IWAE") or line.startswith("| direct")]
    assert len(rows) == 4  # two estimators each; direct's IWAE at the k both have (10)
    assert "iwae_10 " in printed
    written = pd.read_csv(out_csv)
    assert set(written["fit"]) == {"IWAE", "direct"} and set(written["baseline"]) == {"VAE"}


def test_runs_on_other_images_or_a_missing_file_are_refused(tmp_path, capsys):
    labels = np.arange(6) % 10
    a = write_images(tmp_path / "a", np.ones(6), np.ones(6), labels)
    b = write_images(tmp_path / "b", np.ones(6), np.ones(6), labels[::-1].copy())
    with pytest.raises(DataError, match="not scored on the same test images"):
        paired_gaps({"a": read_images(a), "b": read_images(b)})
    assert main(["compare", f"a={a}", f"b={tmp_path / 'nowhere'}"]) == 1
    assert f"{tmp_path / 'nowhere' / 'images.csv'} is missing: give a fit's results directory" in capsys.readouterr().err
    assert main(["compare", f"a={a}", str(b)]) == 1
    assert "is not NAME=DIR" in capsys.readouterr().err


def test_a_fit_is_read_as_another_revision_or_experiment_has_it(tmp_path, monkeypatch, capsys):
    """DIR@REV: the file as a commit or a DVC experiment (by its name) has it, from DVC's cache, while the
    workspace holds another run's."""
    from tests.e2e.helpers import Repo

    repo = Repo(tmp_path)
    repo.run("git", "init", "-q")
    repo.dvc("init", "-q")
    (tmp_path / "params.yaml").write_text("shift: 0.0\n")
    (tmp_path / "write.py").write_text(
        "import pathlib, numpy as np, pandas as pd, yaml\n"
        "shift = yaml.safe_load(open('params.yaml'))['shift']\n"
        "out = pathlib.Path('metrics/vae'); out.mkdir(parents=True, exist_ok=True)\n"
        "pd.DataFrame({'split': 'test', 'image': range(6), 'label': [1, 2, 3, 4, 5, 6],\n"
        "              'ais': 230.0 + np.arange(6) + shift}).to_csv(out / 'images.csv', index=False)\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  evaluate:\n    cmd: python write.py\n    deps: [write.py]\n"
                                       "    params: [shift]\n    outs: [metrics/vae]\n")
    repo.dvc("repro", "-q")
    repo.commit("the baseline run")
    repo.dvc("exp", "run", "-q", "-n", "shifted", "-S", "shift=2.5")
    repo.dvc("exp", "run", "-q", "-S", "shift=7.0")  # the workspace: a third run's
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "base=metrics/vae@HEAD", "exp=metrics/vae@shifted", "now=metrics/vae"]) == 0
    printed = capsys.readouterr().out
    assert "| exp " in printed and "2.50 ± 0.00" in printed
    assert "| now " in printed and "7.00 ± 0.00" in printed
    with pytest.raises(DataError, match=r"metrics/vae/images.csv@no-such-rev: .*dvc exp show"):
        read_images("metrics/vae", rev="no-such-rev")


def identity(binarize: str = "none", sha: str = "a1") -> dict:
    return {"dataset": "mnist", "binarize": binarize, "train_limit": 0, "test_limit": 6, "train_images": 600,
            "test_images": 6, "train_sha256": "t" + sha, "test_sha256": sha}


def test_a_grey_and_a_binarised_run_are_refused_naming_what_differs(tmp_path, capsys):
    """Same image ids and labels, other pixels: the data identity each scores.json records tells them apart."""
    import json

    labels = np.arange(6) % 10
    grey = write_images(tmp_path / "grey", np.ones(6), np.ones(6), labels)
    binary = write_images(tmp_path / "binary", np.ones(6) + 1, np.ones(6), labels)
    again = write_images(tmp_path / "again", np.ones(6) + 2, np.ones(6), labels)
    for directory, data in ((grey, identity()), (binary, identity("static", "b2")), (again, identity())):
        (directory / "scores.json").write_text(json.dumps({"fit": "vae", "data": data}))
    with pytest.raises(DataError, match=r"binary .*and grey .*different data \(binarize 'none' vs 'static'.*"
                                        r"test_sha256 'a1' vs 'b2'"):
        paired_gaps({"grey": read_images(grey), "binary": read_images(binary)})
    assert main(["compare", f"grey={grey}", f"binary={binary}"]) == 1
    assert "scored on different data" in capsys.readouterr().err
    gaps = paired_gaps({"grey": read_images(grey), "again": read_images(again)}).set_index("estimator")
    assert gaps.loc["ais", "gap"] == pytest.approx(2.0)  # two runs on the same data still compare


def test_the_comparison_pairs_by_image_dropping_a_nan_from_both_fits():
    """A NaN in one fit's AIS column (image 2) drops image 2 from both; every other image keeps its partner
    (pairing by position after dropping it would shift every later image onto its neighbour)."""
    from latentfit.core.config import parse_params
    from latentfit.evaluation.compare import estimator_nll, pair

    p = parse_params({"evaluate": {"ais_images": 6, "ais_curve_images": 6, "iwae_images": 6, "iwae_samples": 10,
                                   "iwae_curve": [1], "prior_mc_samples": 100, "prior_mc_curve": [10]}}).evaluate
    n = 8
    base_ais = np.array([200.0, 210, 220, 230, 240, 250])
    shift = np.array([1.0, 2, 3, 4, 5, 6])

    def frame(ais):
        return pd.DataFrame({"split": "test", "image": np.arange(n), "label": np.arange(n) % 3,
                             "ais": np.concatenate([ais, [np.nan] * (n - 6)]), "iwae_10": np.arange(n) + 300.0,
                             "prior_mc_100": np.arange(n) + 400.0})

    fit_ais = base_ais + shift
    fit_ais[2] = np.nan
    result = pair(estimator_nll(frame(fit_ais), p), estimator_nll(frame(base_ais), p), n=6)
    kept = np.array([0, 1, 3, 4, 5])
    assert result.gap.ais.images == 5 and result.gap.ais.mean == pytest.approx(shift[kept].mean())
    assert result.verdict.ais.fit == pytest.approx(fit_ais[kept].mean())
    assert result.verdict.ais.baseline == pytest.approx(base_ais[kept].mean())
    assert result.gap.iwae.mean == 0 and result.gap.iwae.images == n
