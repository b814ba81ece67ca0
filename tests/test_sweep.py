"""The sweep's plan, ordering and statistics, without running a pipeline (tests/e2e/test_sweep.py runs them)."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from latentfit.core.errors import ParamsError
from latentfit.sweep import study
from latentfit.sweep.driver import Options, SweepError, leaders, prepare, slowest, stage_params
from latentfit.sweep.grid import parse_seeds, parse_set, plan, seed_keys
from latentfit.sweep.records import RunRecords, StageTime, stage_costs
from latentfit.sweep.summary import seed_statistics, statistics

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_set_options_read_like_dvc_exp_run():
    assert parse_set("model.z_dim=2,5,20") == ("model.z_dim", [2, 5, 20])
    assert parse_set("fits.vae.lr=1e-3,0.01") == ("fits.vae.lr", [0.001, 0.01])  # YAML 1.1 leaves 1e-3 a string
    assert parse_set("evaluate.prior_mc_curve=[10,100],[64]") == ("evaluate.prior_mc_curve", [[10, 100], [64]])
    assert parse_set("fits.direct.fixed_samples=true,false") == ("fits.direct.fixed_samples", [True, False])
    assert parse_set("model.z_dim=range(2,11,4)") == ("model.z_dim", [2, 6, 10])
    assert parse_set("data.dataset=choice(mnist,fashion-mnist)") == ("data.dataset", ["mnist", "fashion-mnist"])
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("0,3,7") == [0, 3, 7]
    for bad in ("model.z_dim", "=2", "model.z_dim=2,2"):
        with pytest.raises(ParamsError):
            parse_set(bad)
    for bad in ("a-b", "1,1", "", "-1"):
        with pytest.raises(ParamsError, match="--seeds"):
            parse_seeds(bad)


def test_a_grid_times_seeds_gives_one_named_run_each_with_every_seed_set():
    runs = plan("zgrid", ["model.z_dim=2,20", "fits.direct.mc_samples=16,64", "fits.vae.epochs=3"], [0, 1], PARAMS)
    assert len(runs) == 8
    assert runs[0].name == "zgrid-z_dim=2-mc_samples=16-seed=0"
    assert len({r.name for r in runs}) == 8
    run = runs[-1]
    assert run.overrides == {"fits.vae.epochs": 3, "model.z_dim": 20, "fits.direct.mc_samples": 64,
                             **dict.fromkeys(seed_keys(PARAMS), 1)}
    # every fit of params.yaml gets the replicate's seed: a third fit's too
    assert seed_keys(PARAMS) == ("fits.vae.seed", "fits.direct.seed", "evaluate.seed", "visualize.seed")
    three = PARAMS | {"fits": PARAMS["fits"] | {"iwae8": {"kind": "vae", "iwae_k": 8}}}
    assert plan("t", [], [3], three)[0].overrides["fits.iwae8.seed"] == 3
    assert "-S" in run.set_args() and "fits.vae.epochs=3" in run.set_args()
    # two swept keys with the same last part keep their sections in the name
    both = plan("lr", ["fits.vae.lr=0.001,0.002", "fits.direct.lr=0.001,0.002"], [0], PARAMS)
    assert both[0].name == "lr-fits.vae.lr=0.001-fits.direct.lr=0.001-seed=0"


@pytest.mark.parametrize("option, message", [
    ("model.zdim=2,5", "no key 'zdim' in 'model'"),
    ("modle.z_dim=2", "no section 'modle'"),
    ("model.z_dim=0,5", "model.z_dim = 0 is out of range"),
    ("fits.vae.lr=fast", "wrong type"),
    ("fits.direct.seed=3", "--seeds"),
])
def test_a_bad_key_or_value_is_named_before_anything_runs(option, message):
    with pytest.raises(ParamsError, match=message):
        plan("bad", [option], [0], PARAMS)


def test_runs_sharing_a_stage_wait_for_the_first_that_computes_it():
    """In a z_dim x M grid the VAE does not depend on M: for each z_dim and seed one run trains it, the
    others start after it and restore it from the run cache; different seeds never wait for each other."""
    runs = plan("g", ["model.z_dim=2,20", "fits.direct.mc_samples=16,64"], [0, 1], PARAMS)
    waits = leaders(runs, stage_params(ROOT))
    by_name = {r.name: r for r in runs}
    assert set(waits) == set(by_name) and sum(map(bool, waits.values())) == 4  # M = 64 waits, for each z_dim and seed
    for name, before in waits.items():
        run = by_name[name]
        point = dict(run.point)
        if point["fits.direct.mc_samples"] == 16:
            assert before == [], name
        else:
            assert len(before) == 1
            leader = by_name[before[0]]
            assert dict(leader.point)["model.z_dim"] == point["model.z_dim"] and leader.seed == run.seed
    # seeds alone share only download and preprocess, which every run shares: nobody waits
    assert all(not w for w in leaders(plan("s", [], [0, 1, 2], PARAMS), stage_params(ROOT)).values())


def test_stage_params_follow_the_dag():
    closure = stage_params(ROOT)
    assert closure["train@vae"] == {"data", "data.dataset", "preprocess", "model", "fits.vae", "device"}
    assert {"fits.vae", "evaluate.ais_steps"} <= closure["evaluate@vae"] and "fits.direct" not in closure["evaluate@vae"]
    assert {"fits.direct", "evaluate.gap_steps"} <= closure["evaluate@direct"]
    assert "fits.vae" not in closure["evaluate@direct"]
    assert "evaluate.gap_steps" not in closure["figure_data@vae"] and "visualize.tsne_perplexity" in closure["figure_data@vae"]
    assert "visualize.tsne_perplexity" not in closure["likelihood@vae"] | closure["evaluate@vae"]
    assert {"fits", "evaluate.ais_steps", "visualize.tsne_perplexity"} <= closure["visualize"]


def test_seed_statistics_are_the_t_interval_of_the_mean():
    values = [17.2, 16.1, 18.4, 17.9, 16.8]
    s = seed_statistics(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert s["mean"] == pytest.approx(np.mean(values)) and s["sd"] == pytest.approx(np.std(values, ddof=1))
    assert (s["lo"], s["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    one = seed_statistics([3.0])
    assert one["mean"] == 3.0 and math.isnan(one["hi"])


def _git_repo(path: Path) -> Path:
    path.mkdir()
    for item in ("dvc.yaml", "params.yaml"):
        (path / item).write_text((ROOT / item).read_text())
    env_args = ["-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True)
    subprocess.run(["git", *env_args, "add", "-A"], cwd=path, check=True)
    subprocess.run(["git", *env_args, "commit", "-qm", "init"], cwd=path, check=True)
    return path


def test_a_dirty_tree_or_an_unreachable_remote_is_refused_before_anything_runs(tmp_path):
    repo = _git_repo(tmp_path / "repo")
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace("z_dim: 20", "z_dim: 5"))
    with pytest.raises(SweepError, match="(?s)uncommitted changes.*M params.yaml"):
        prepare(Options(name="s"), repo)
    subprocess.run(["git", "checkout", "params.yaml"], cwd=repo, check=True)
    with pytest.raises(SweepError, match="cannot be reached"):
        prepare(Options(name="s", git_remote=str(tmp_path / "nowhere.git")), repo)
    with pytest.raises(SweepError, match="--git-remote"):
        prepare(Options(name="s", address="10.0.0.1:6379"), repo)
    sweep = prepare(Options(name="s", sets=["model.z_dim=2,5"], seeds=[0, 1]), repo)
    assert [r.name for r in sweep.todo] == ["s-z_dim=2-seed=0", "s-z_dim=2-seed=1", "s-z_dim=5-seed=0",
                                            "s-z_dim=5-seed=1"]


def test_a_run_restored_whole_from_the_cache_gets_its_pipeline_run_once(tmp_path):
    """A landed run in which no stage ran logged nothing to MLflow: the sweep records its pipeline run
    under the sweep's run, with the params and metrics its experiment's commit holds, and only once."""
    import json

    import mlflow

    from latentfit.evaluation.schema import Details
    from latentfit.sweep.mlflow_runs import record_restored
    from latentfit.sweep.repo import exp_ref
    from latentfit.sweep.spec import Sweep
    from latentfit.sweep.worker import Transport

    repo = _git_repo(tmp_path / "repo")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    runs = plan("r", ["model.z_dim=2,5"], [0], PARAMS)
    (repo / "metrics").mkdir()
    (repo / "metrics/train").mkdir()
    (repo / "metrics/train/vae.json").write_text(json.dumps({"train": {"vae": 101.5}}))
    details = json.loads((ROOT / "tests/data/comparison_details.json").read_text())
    (repo / "metrics/comparison_details.json").write_text(json.dumps(details))
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "the experiment"], cwd=repo, check=True)
    exp_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
    subprocess.run(["git", "update-ref", exp_ref(base, runs[0].name), exp_commit], cwd=repo, check=True)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("latentfit")
    parent = client.create_run(experiment, run_name="sweep r").info.run_id
    sweep = Sweep(repo, Options(name="r", sets=["model.z_dim=2,5"]), base, runs, runs,
                  Transport(source=str(repo), git_remote=str(repo), cache_dir=str(tmp_path / "cache")), uri, "latentfit")
    for _ in range(2):
        record_restored(sweep, parent, runs[0].name)
    (restored,) = client.search_runs([experiment], f"tags.dvc_exp = '{runs[0].name}'")
    assert restored.data.tags["restored"] == "true" and restored.data.tags["mlflow.parentRunId"] == parent
    assert restored.data.tags["sweep_point"] == "model.z_dim=2"
    assert restored.data.params["model.z_dim"] == "20", "the params its commit holds"
    assert restored.data.metrics["train.vae.train.vae"] == 101.5
    written = Details.from_dict(details)
    assert restored.data.metrics["visualize.fits.vae.test.ais_nll"] == written.fits["vae"].test.ais_nll


def test_without_ray_the_sweep_says_how_to_install_it(monkeypatch, capsys):
    import importlib.util

    from latentfit import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert cli.main(["sweep", "-n", "s", "-S", "model.z_dim=2,5"]) == 1
    assert "pip install -e '.[sweep]'" in capsys.readouterr().err


def test_a_run_reserves_a_gpu_where_the_cluster_has_them(monkeypatch):
    import ray

    from latentfit.sweep.driver import gpus_per_run

    for resources, asked, reserved in (({"CPU": 2.0}, None, 0.0), ({"CPU": 16.0, "GPU": 1.0}, None, 1.0),
                                       ({"GPU": 4.0}, 0.25, 0.25), ({"GPU": 4.0}, 0.0, 0.0)):
        monkeypatch.setattr(ray, "cluster_resources", lambda r=resources: r)
        assert gpus_per_run(Options(name="s", gpus_per_run=asked)) == reserved


def _synthetic_sweep(slope: float = 2.0) -> pd.DataFrame:
    """Runs of a z_dim x M x 2-seed sweep whose gap is 3 + slope * (rate - log M) plus seed noise."""
    rows, rng = [], np.random.default_rng(0)
    for z, rate in ((2, 5.0), (20, 15.0)):
        for m in (16, 64, 256):
            for seed in (0, 1):
                r = rate + 0.1 * rng.standard_normal()
                gap = 3 + slope * (r - math.log(m)) + 0.2 * rng.standard_normal()
                records = RunRecords({"fits": {"vae": {"kind": "vae"}, "direct": {"kind": "direct", "mc_samples": m}}},
                                     [StageTime("train@direct", 10.0 * m, f"d{z}{m}{seed}"),
                                      StageTime("train@vae", 60.0, f"v{z}{seed}")])
                row = {"run": f"s-{z}-{m}-{seed}", "point": f"model.z_dim={z},fits.direct.mc_samples={m}",
                       "model.z_dim": z, "fits.direct.mc_samples": m, "seed": seed, "ais.gap": gap,
                       "ais.vae": 230.0 + seed, "ais.direct": 230.0 + seed + gap, "rate.direct": r}
                row |= {k: v for k, (_, v) in records.derived({"direct": r}).items()}
                rows.append(row)
    runs = pd.DataFrame(rows)
    runs.attrs["labels"] = {c: c for c in runs.columns if "." in c and c not in ("model.z_dim", "fits.direct.mc_samples")}
    return runs


def test_the_study_table_derives_rate_minus_log_m_and_fits_the_gap_on_it():
    runs = _synthetic_sweep(slope=2.0)
    assert runs["log_m.direct"].tolist() == [math.log(m) for z in (2, 20) for m in (16, 64, 256) for _ in (0, 1)]
    assert np.allclose(runs["rate_minus_log_m.direct"], runs["rate.direct"] - runs["log_m.direct"])
    assert runs["train_seconds.direct"].tolist() == [10.0 * m for z in (2, 20) for m in (16, 64, 256) for _ in (0, 1)]
    stats = statistics(runs)
    table = study.table(runs, stats, "direct", "vae")
    assert len(table) == 6 and (table["seeds"] == 2).all()
    for _, p in table.iterrows():  # each point's columns are the means of its two runs
        mine = runs[runs.point == p["point"]]
        assert p["gap"] == pytest.approx(mine["ais.gap"].mean())
        assert p["rate_minus_log_m"] == pytest.approx(mine["rate_minus_log_m.direct"].mean())
    line = study.fit_line(table)
    assert line.points == 6 and line.slope == pytest.approx(2.0, abs=0.15) and line.r2 > 0.95
    assert (line.slope, line.intercept) == tuple(pytest.approx(v) for v in np.polyfit(table["rate_minus_log_m"],
                                                                                      table["gap"], 1))
    residual, x = table["residual"], table["rate_minus_log_m"]  # least squares: residuals orthogonal to 1 and x
    assert abs(residual.sum()) < 1e-9 and abs((residual * x).sum()) < 1e-9
    md = "\n".join(study.markdown(table, "direct", "vae"))
    assert md.count("| model.z_dim=") == 6 and "Least squares over the 6 points" in md


def test_the_study_figures_draw_a_line_per_z_dim_against_log_m_and_every_point_against_rate():
    runs = _synthetic_sweep()
    table = study.table(runs, statistics(runs), "direct", "vae")
    figures = study.figures(runs, table, ["model.z_dim", "fits.direct.mc_samples"], "direct", "vae")
    by_m, by_rate = (figures[name].axes[0] for name in ("gap_vs_log_m", "gap_vs_rate"))
    assert [t.get_text() for t in by_m.get_legend().get_texts()] == ["z_dim = 2", "z_dim = 20"]
    for z, drawn in zip((2, 20), by_m.containers, strict=True):  # errorbar containers: (line, caps, bars)
        mine = table[table.point.str.startswith(f"model.z_dim={z},")]
        assert np.allclose(drawn[0].get_xdata(), [math.log(m) for m in (16, 64, 256)])
        assert np.allclose(drawn[0].get_ydata(), mine["gap"])
    xs = np.concatenate([c[0].get_xdata() for c in by_rate.containers])
    assert np.allclose(sorted(xs), sorted(table["rate_minus_log_m"]))
    assert "log M" in by_m.get_xlabel() and "rate - log M" in by_rate.get_xlabel() and "nats" in by_m.get_ylabel()
    assert any("least squares" in t.get_text() for t in by_rate.get_legend().get_texts())
    for f in figures.values():
        study.close(f)


def test_stage_costs_count_a_stage_restored_from_the_run_cache_once():
    vae = StageTime("train@vae", 60.0, "v")
    costs = stage_costs({"a": RunRecords({}, [vae, StageTime("train@direct", 5.0, "d1")]),
                         "b": RunRecords({}, [vae, StageTime("train@direct", 7.0, "d2")])})
    assert costs == [{"stage": "train@vae", "computed": 1, "runs": 2, "seconds": 60.0, "mean_seconds": 60.0},
                     {"stage": "train@direct", "computed": 2, "runs": 2, "seconds": 12.0, "mean_seconds": 6.0}]


def test_the_progress_names_the_longest_running_run_first():
    running = {"zm-a": 100.0, "zm-b": 40.0, "zm-c": 70.0}
    assert slowest(running, now=700.0) == "zm-b (11 min), zm-c (10 min), zm-a (10 min)"
    assert slowest(running, 1, now=700.0) == "zm-b (11 min)"
    assert slowest({}, now=1.0) == ""


def test_a_point_reaches_the_vae_when_its_gap_interval_reaches_zero():
    runs = _synthetic_sweep()
    gaps = {16: (5.0, 5.2), 64: (-1.0, 1.0), 256: (-5.0, -4.8)}  # worse, as good, better than the VAE
    runs["ais.gap"] = [gaps[m][seed] for m, seed in zip(runs["fits.direct.mc_samples"], runs["seed"], strict=True)]
    table = study.table(runs, statistics(runs), "direct", "vae").set_index("point")
    reaches = {m: table.loc[f"model.z_dim=20,fits.direct.mc_samples={m}", "reaches_baseline"] for m in gaps}
    assert reaches == {16: False, 64: True, 256: True}


def test_the_study_draws_only_what_the_runs_measured():
    runs = _synthetic_sweep().drop(columns=["rate.direct", "rate_minus_log_m.direct"])  # evaluate.anatomy: false
    runs.attrs["labels"] = {k: v for k, v in runs.attrs["labels"].items() if k in runs}
    table = study.table(runs, statistics(runs), "direct", "vae")
    assert table["rate_minus_log_m"].isna().all() and study.fit_line(table) is None
    figures = study.figures(runs, table, ["model.z_dim", "fits.direct.mc_samples"], "direct", "vae")
    assert list(figures) == ["gap_vs_log_m"]  # nothing to plot against a rate nobody measured
    study.close(figures["gap_vs_log_m"])
    failed = _synthetic_sweep().assign(**{"ais.gap": math.nan})  # every AIS failed: no point has a gap
    empty = study.table(failed, statistics(failed), "direct", "vae")
    assert empty.empty and study.figures(failed, empty, [], "direct", "vae") == {}
    md = "\n".join(study.markdown(empty, "direct", "vae"))
    assert "Too few grid points" in md
