"""The real pipeline: `dvc repro` and `dvc exp run` in a temporary git repo, on synthetic IDX files
served over HTTP on 127.0.0.1. One `dvc repro` builds a base repository for the module; a test that
changes anything works on its own copy of it, so each test runs alone (`pytest tests/e2e -k NAME`)."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from unittest import mock

import pandas as pd
import psutil
import pytest
import torch
import yaml

from latentfit.visualize.panels import expected
from tests.e2e.helpers import (
    BLOCKS,
    FIGURES,
    HEADLINE,
    SMALL,
    STAGES,
    TRACKED,
    Repo,
    free_port,
    new_repo,
    ran_stages,
    serving,
    show_in_terminal,
)
from tests.synthetic import FileServer

pytestmark = pytest.mark.e2e
VAE_STAGES = {s for s in STAGES if s.endswith("@vae")}  # train@vae and its evaluation's stages


@pytest.fixture(scope="module")
def base(tmp_path_factory, synthetic_dir):
    """A repository after one full `dvc repro`; tests read it and never change it."""
    repo = new_repo(tmp_path_factory.mktemp("pipeline"))
    with FileServer(synthetic_dir) as server:
        repo.set_params(data={"mirrors": [server.url], "verify": "shape"}, **SMALL)
        repo.commit("pipeline")
        repo.first_run = repo.dvc("repro")
        repo.commit("repro")  # dvc.lock and the small outputs, as a user commits them
        yield repo


@pytest.fixture
def repo(base, tmp_path):
    """A copy of the base repository for one test to change (DVC's run state is left behind: it holds
    absolute paths; the copy's MLflow store is its own, its experiment's artifacts stay the base's)."""
    path = tmp_path / "repo"
    shutil.copytree(base.path, path, symlinks=True, ignore=lambda d, names: ["tmp"] if d.endswith(".dvc") else [])
    copy = Repo(path)
    copy.first_run = base.first_run
    return copy


def test_repro_runs_every_stage_once_per_fit_and_writes_every_output(base):
    repo = base
    assert ran_stages(repo.first_run) == set(STAGES)
    p = repo.path
    assert sorted(f.name for f in (p / "data/raw").iterdir()) == sorted(
        ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz"])
    for out in ("data/prepared/train.pt", "data/prepared/test.pt", "models/vae.pt", "models/direct.pt",
                "models/classifier.pt"):
        assert (p / out).stat().st_size > 0, out
    for fit in ("vae", "direct"):
        assert {f.name for f in (p / "metrics/fits" / fit).iterdir()} == {"scores.json", "images.csv", "estimators.csv",
                                                                          "rate_distortion.csv"}
        assert (p / "evaluation" / fit / "figure_data/figures.npz").is_file()
        assert {f.name for f in (p / "evaluation" / fit / "likelihood").iterdir()} == {
            "part.json", "images.csv", "estimators.csv", "state.pt", "encoder.pt"}
    listed = set(re.findall(r"^(\S+)", repo.dvc("stage", "list"), flags=re.MULTILINE))
    assert listed == set(STAGES)
    assert {f.stem for f in (p / "plots/figures").glob("*.png")} == FIGURES
    for png in (p / "plots/figures").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(p.rglob("*.tmp")), "a temporary file was left behind"
    drawn = json.loads(repo.dvc("plots", "show", "--json"))["data"]
    assert {"training", "prior_sampling", "denoising", "estimators", "rate_distortion"} <= set(drawn)
    for curve in ("training", "prior_mc", "denoise", "estimators", "rate_distortion"):  # a row per fit and point
        assert set(pd.read_csv(p / f"plots/{curve}.csv")["fit"]) == {"vae", "direct"}, curve


def test_metrics_hold_every_key(base):
    repo = base
    assert repo.json("metrics/train/vae.json") == {"train": {"vae": pytest.approx(
        pd.read_csv(repo.path / "plots/train/vae.csv")["neg_elbo"].iloc[-1], rel=1e-5)}}  # its -ELBO
    assert repo.json("metrics/train/direct.json") == {"train": {"direct": pytest.approx(
        pd.read_csv(repo.path / "plots/train/direct.csv")["nll"].iloc[-1], rel=1e-5)}}  # its MC NLL, M draws
    head, ev = repo.json("metrics/comparison.json"), repo.json("metrics/comparison_details.json")
    fits, pair = ev["fits"], ev["pairs"]["direct"]
    assert head == {"ais": {"vae": fits["vae"]["test"]["ais_nll"], "direct": fits["direct"]["test"]["ais_nll"],
                            "gap": pair["gap"]["ais"]["mean"]},
                    "iwae": {"vae": fits["vae"]["test"]["iwae_nll"], "direct": fits["direct"]["test"]["iwae_nll"],
                             "gap": pair["gap"]["iwae"]["mean"]},
                    "nelbo": {"vae": fits["vae"]["test"]["neg_elbo"]},
                    "prior": {"direct": fits["direct"]["test"]["prior_mc_nll"]},
                    "device": "cpu"}  # where both fits were trained and evaluated (resolved from `device: auto`)
    for fit in ("vae", "direct"):  # the comparison holds what each fit's own stage wrote, unchanged
        assert fits[fit] == repo.json(f"metrics/fits/{fit}/scores.json")
        assert set(fits[fit]["latent"]) == {"knn_accuracy", "silhouette"}
        assert fits[fit]["ran_on"]["device"] == fits[fit]["ran_on"]["trained_on"] == "cpu"
        assert fits[fit]["ran_on"]["torch"] == torch.__version__
        assert fits[fit]["sample_fd"] > ev["reference"]["data_fd"] >= 0
        images = pd.read_csv(repo.path / f"metrics/fits/{fit}/images.csv")
        test = images[images["split"] == "test"]
        assert len(test) == 300 and test["ais"].mean() == pytest.approx(fits[fit]["test"]["ais_nll"])
    assert set(fits["vae"]["test"]) == {"neg_elbo", "rec", "kl", "prior_mc_nll", "iwae_nll", "iwae_nll_se",
                                        "iwae_nll_posthoc", "ais_nll", "ais_nll_se", "excess"}
    assert set(fits["direct"]["test"]) == {"prior_mc_nll", "train_draws_nll", "iwae_nll", "iwae_nll_se", "ais_nll",
                                           "ais_nll_se", "excess"}
    assert set(pair["gap"]) == set(pair["verdict"]) == {"ais", "iwae", "prior_mc"}
    assert 0 <= ev["reference"]["classifier_accuracy"] <= 1
    assert repo.json("metrics/reference.json") == {"reference": ev["reference"]}
    # the order the math guarantees: floor < IWAE NLL <= -ELBO
    assert ev["reference"]["entropy_floor"] < fits["vae"]["test"]["iwae_nll"] <= fits["vae"]["test"]["neg_elbo"]
    report = (repo.path / "metrics/report.md").read_text()
    assert report.splitlines()[2].startswith("**The ") and f"{fits['direct']['test']['ais_nll']:.2f}" in report
    assert list(pd.read_csv(repo.path / "plots/prior_mc.csv")["samples"]) == [10, 100, 500] * 2
    assert set(pd.read_csv(repo.path / "plots/estimators.csv")["estimator"]) == {"prior", "iwae", "ais"}
    assert len(pd.read_csv(repo.path / "plots/denoise.csv")) == 5 * 2
    assert set(fits["vae"]["denoise"]) == {"flip_0", "flip_0_01", "flip_0_02", "flip_0_05", "flip_0_1"}
    vae = pd.read_csv(repo.path / "plots/train/vae.csv")
    assert list(vae["epoch"]) == [1, 2] and {"rec", "kl", "neg_elbo", "seconds"} <= set(vae.columns)
    assert list(pd.read_csv(repo.path / "plots/train/direct.csv")["epoch"]) == [1, 2]


def test_mlflow_holds_one_run_per_stage_with_epoch_histories(base):
    repo = base
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo.path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("latentfit")
    assert experiment.artifact_location == (repo.path / "mlartifacts").as_uri()
    # MLflow 3's UI opens an experiment by its kind: on the runs table, not the GenAI traces overview
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags["stage"] == "pipeline"]
    runs = [r for r in runs if r is not parent]
    assert sorted(r.data.tags["stage"] for r in runs) == sorted(TRACKED)
    assert len({r.data.tags["pipeline"] for r in runs}) == 1, "one pipeline execution, one grouping tag"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}, "nested under one parent"
    for tag in ("dvc_exp", "git_commit", "dataset"):
        assert all(r.data.tags[tag] == parent.data.tags[tag] for r in runs)
    assert parent.data.metrics["evaluate.vae.test.iwae_nll"] == pytest.approx(
        repo.json("metrics/fits/vae/scores.json")["test"]["iwae_nll"])
    assert parent.data.metrics["visualize.ais.gap"] == pytest.approx(repo.json("metrics/comparison.json")["ais"]["gap"])
    by_stage = {r.data.tags["stage"]: r for r in runs}
    for fit, columns in (("vae", ["rec", "kl", "neg_elbo"]), ("direct", ["nll"])):
        stage, csv = f"train@{fit}", pd.read_csv(repo.path / f"plots/train/{fit}.csv")
        for column in columns:
            history = client.get_metric_history(by_stage[stage].info.run_id, column)
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
            assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(list(csv[column]), rel=1e-5)
    assert by_stage["train@vae"].data.params["fits.vae.epochs"] == "2"
    for stage in ("train@vae", "train@direct", "reference", "evaluate@vae", "evaluate@direct"):  # where each ran
        tags = by_stage[stage].data.tags
        assert tags["device"] == "cpu" and tags["torch"] == torch.__version__ and tags["device_name"], stage
    assert by_stage["evaluate@vae"].data.metrics["test.neg_elbo"] == pytest.approx(
        repo.json("metrics/fits/vae/scores.json")["test"]["neg_elbo"])
    posthoc = client.get_metric_history(by_stage["evaluate@vae"].info.run_id, "posthoc.neg_elbo")  # its epochs
    assert [m.step for m in sorted(posthoc, key=lambda m: m.step)] == [1, 2]  # evaluate.encoder_epochs
    assert "seconds.likelihood" in by_stage["evaluate@direct"].data.metrics
    artifacts = {a.path for a in client.list_artifacts(by_stage["visualize"].info.run_id, "figures")}
    assert artifacts == {f"figures/{name}.png" for name in FIGURES}
    assert_models_load_back(client.tracking_uri, by_stage, repo.path)


def assert_models_load_back(uri: str, by_stage: dict, root: Path) -> None:
    """The MLflow models compute what the DVC outputs models/*.pt do: the decoders z -> Bernoulli means,
    the encoder y -> [mu | logvar]."""
    import mlflow
    import torch

    from latentfit.model.files import load_decoder, load_vae

    z, y = torch.randn(4, 20), torch.rand(3, 784)
    with mock.patch.dict(os.environ):  # set_tracking_uri exports MLFLOW_TRACKING_URI: keep it to this check
        mlflow.set_tracking_uri(uri)
        for name in ("vae", "direct"):
            if f"train@{name}" not in by_stage:
                continue
            logged = mlflow.pytorch.load_model(f"runs:/{by_stage[f'train@{name}'].info.run_id}/decoder")
            saved, _ = load_decoder(root / f"models/{name}.pt")
            torch.testing.assert_close(logged(z), torch.sigmoid(saved(z)))
        if "train@vae" in by_stage:
            logged = mlflow.pytorch.load_model(f"runs:/{by_stage['train@vae'].info.run_id}/encoder")
            torch.testing.assert_close(logged(y), torch.cat(load_vae(root / "models/vae.pt").encoder(y), dim=-1))


def test_models_are_registered_linked_to_their_held_out_numbers_and_ranked(base):
    from mlflow.tracking import MlflowClient

    from latentfit.core.fits import registered_name
    from latentfit.core.io import file_md5

    client = MlflowClient(f"sqlite:///{base.path / 'mlflow.db'}")
    details = base.json("metrics/comparison_details.json")["fits"]
    for fit in ("vae", "direct"):
        best = client.get_model_version_by_alias(registered_name(fit), "best-mnist")  # latentfit-<fit>-decoder
        assert best.tags["dvc_md5"] == file_md5(base.path / f"models/{fit}.pt"), "the version evaluate measured"
        assert float(best.tags["ais_nll"]) == pytest.approx(details[fit]["test"]["ais_nll"], abs=1e-5)
        linked = client.get_logged_model(best.model_id or best.tags["model_id"]).metrics
        assert {m.key: m.value for m in linked}["test.ais_nll"] == pytest.approx(details[fit]["test"]["ais_nll"])
    assert client.search_model_versions(f"name = '{registered_name('vae', 'encoder')}'")
    log = base.first_run
    assert "pickle" not in log.lower(), "no model is pickled, so MLflow has no pickle warning to give"


def test_a_registered_model_is_served_by_mlflow_and_answers_its_input_example(base, tmp_path):
    """`mlflow models serve -m models:/NAME@ALIAS` on 127.0.0.1 answers the decoder's own input example."""
    import urllib.error
    import urllib.request

    import mlflow
    import numpy as np
    import torch
    from mlflow.models import Model

    from latentfit.core.fits import registered_name
    from latentfit.model.files import load_decoder

    port = free_port()
    env = {**base.env, "MLFLOW_TRACKING_URI": f"sqlite:///{base.path / 'mlflow.db'}"}
    uri = f"models:/{registered_name('vae')}@best-mnist"
    args = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "--host",
            "127.0.0.1", "--port", str(port)]
    with serving(args, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", cwd=tmp_path, env=env):
        with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"]}):
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "model"))
            example = Model.load(local).load_input_example(local)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                         data=json.dumps({"inputs": np.asarray(example).tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            means = np.asarray(json.loads(answer.read())["predictions"], dtype=np.float32)
        for bad in (float("nan"), 1e39):  # 1e39 is inf in float32: both are refused, not answered with NaN images
            z = np.asarray(example, dtype=np.float64)
            z[0, 0] = bad
            refused = urllib.request.Request(request.full_url, method="POST", headers=request.headers,
                                             data=json.dumps({"inputs": z.tolist()}).encode())
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(refused, timeout=60)
            assert answer.value.code == 400, answer.value.read()[:500]
    decoder, _ = load_decoder(base.path / "models/vae.pt")
    expected = torch.sigmoid(decoder(torch.as_tensor(np.asarray(example), dtype=torch.float32))).detach().numpy()
    assert means.shape == (2, 784)
    np.testing.assert_allclose(means, expected, atol=1e-5)
    print(f"served {uri}: {means.shape[0]} images of {means.shape[1]} Bernoulli means, first {means[0, :4]}")


def browser() -> str:
    found = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs chromium-headless-shell (.ci/run); it is missing")
        pytest.skip("no headless Chromium here: apt-get install -y chromium-headless-shell")
    return found


@pytest.mark.browser
def test_latentfit_ui_opens_on_the_pipelines_runs_in_a_real_browser(base, tmp_path):
    import html

    from mlflow.tracking import MlflowClient

    chromium = browser()
    port = free_port()
    cli = [sys.executable, "-m", "latentfit.cli", "ui", "--port", str(port)]
    url = base.run(*cli, "--print-url").strip()
    experiment = MlflowClient(f"sqlite:///{base.path / 'mlflow.db'}").get_experiment_by_name("latentfit")
    assert url == f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    # `latentfit ui` itself: the link once the server answers, then SIGTERM to it alone stops every worker
    ui = subprocess.Popen(cli, cwd=base.path, env=base.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not (lines and lines[-1].startswith("runs of this project:")):
            line = ui.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        assert lines[0].startswith("starting the MLflow UI") and url in lines[-1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10):  # up when the link shows
            pass
        workers = psutil.Process(ui.pid).children(recursive=True)
        page = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
                               "--virtual-time-budget=30000", "--dump-dom", url],
                              capture_output=True, text=True, timeout=180, check=False).stdout
        ui.send_signal(signal.SIGTERM)
        out, _ = ui.communicate(timeout=60)
        assert ui.returncode == 143 and f"port {port} is free" in out, out  # SIGTERM: 128 + 15, as the stages
        assert workers and not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, "something still listens on the UI's port"
    finally:
        if ui.poll() is None:
            ui.kill()
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    pipeline = MlflowClient(f"sqlite:///{base.path / 'mlflow.db'}").search_runs(
        [experiment.experiment_id], "tags.stage = 'pipeline'")[0].info.run_name
    assert pipeline in text, f"the pipeline's run {pipeline!r} is not in the page:\n{text[:3000]}"
    headers = [html.unescape(re.sub(r"<[^>]+>", "", h)).strip()
               for h in re.findall(r'role="columnheader"[^>]*>(.*?)</div>', page, flags=re.S)]
    print("runs table columns:", [h for h in headers if h])
    print("rows:", [line for line in re.split(r"\s{2,}", text) if pipeline in line][:3])


def test_second_repro_runs_nothing(repo):
    assert ran_stages(repo.dvc("repro")) == set()
    assert "up to date" in repo.dvc("status")


def test_changing_direct_epochs_reruns_only_what_depends_on_it(repo):
    params = yaml.safe_load((repo.path / "params.yaml").read_text())
    params["fits"]["direct"]["epochs"] = 3
    (repo.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(repo.dvc("repro")) == {s for s in STAGES if s.endswith("@direct")} | {"visualize"}
    assert len(pd.read_csv(repo.path / "plots/train/direct.csv")) == 3


def test_exp_run_and_exp_show(repo):
    out = repo.dvc("exp", "run", "-n", "e2e-exp", "-S", "fits.vae.epochs=3")
    assert ran_stages(out) == VAE_STAGES | {"visualize"}
    shown = json.loads(repo.dvc("exp", "show", "--json"))
    exps = [e for row in shown for e in (row.get("experiments") or [])]
    exp = next(e for e in exps if e.get("name") == "e2e-exp")["revs"][0]["data"]
    assert exp["params"]["params.yaml"]["data"]["fits"]["vae"]["epochs"] == 3
    metrics = exp["metrics"]
    assert set(metrics) == {"metrics/train/vae.json", "metrics/train/direct.json", "metrics/comparison.json"}
    assert metrics["metrics/train/vae.json"]["data"]["train"]["vae"] > 0
    assert metrics["metrics/comparison.json"]["data"]["ais"]["gap"] == pytest.approx(
        repo.json("metrics/comparison_details.json")["pairs"]["direct"]["gap"]["ais"]["mean"])

    # what a person sees: `dvc exp show`, no flags, in a 160-column terminal (its pager chops long lines)
    table = show_in_terminal(repo, [sys.executable, "-m", "dvc", "exp", "show"], columns=160)
    lines = [line for line in table.splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= 160, table
    header = next(line for line in lines if "Experiment" in line)
    missing = [column for column in HEADLINE if column not in header.split()]
    assert not missing, f"headline columns {missing} not shown:\n{table}"
    row = next(line for line in lines if "[e2e-exp]" in line)
    assert f"{metrics['metrics/comparison.json']['data']['ais']['vae']:.5g}" in row, table

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo.path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("latentfit").experiment_id],
                              "tags.dvc_exp = 'e2e-exp' and tags.stage != 'pipeline'")
    assert sorted(r.data.tags["stage"] for r in runs) == sorted((VAE_STAGES & set(TRACKED)) | {"visualize"})


def test_a_direct_only_experiment_leaves_every_vae_number_as_it_was(repo):
    """The acceptance of one fit, one evaluation: changing the direct fit's M runs no stage of the VAE, and
    every VAE number (its own files and its columns of the comparison) is bit-identical."""
    before = {f: (repo.path / f).read_bytes() for f in ("metrics/fits/vae/scores.json", "metrics/fits/vae/images.csv",
                                                       "evaluation/vae/figure_data/figures.npz", "models/vae.pt")}
    head, details = repo.json("metrics/comparison.json"), repo.json("metrics/comparison_details.json")
    out = repo.dvc("exp", "run", "-n", "m32", "-S", "fits.direct.mc_samples=32")
    assert ran_stages(out) == {s for s in STAGES if s.endswith("@direct")} | {"visualize"}
    assert all((repo.path / f).read_bytes() == data for f, data in before.items())
    after_head, after = repo.json("metrics/comparison.json"), repo.json("metrics/comparison_details.json")
    assert after["fits"]["vae"] == details["fits"]["vae"] and after["reference"] == details["reference"]
    assert all(after_head[key]["vae"] == head[key]["vae"] for key in ("ais", "iwae", "nelbo"))
    assert after_head["ais"]["direct"] != head["ais"]["direct"]


def test_an_experiment_restores_evaluate_from_the_run_cache(repo):
    """evaluate, the costliest stage, is run-cached per fit: an experiment whose inputs of a fit's evaluation
    an earlier experiment already had takes its outputs from DVC's run cache instead of recomputing them."""
    first = repo.dvc("exp", "run", "--temp", "-n", "ev-a", "-S", "evaluate.seed=5")
    assert {"likelihood@vae", "likelihood@direct", "visualize"} <= ran_stages(first)
    second = repo.dvc("exp", "run", "-n", "ev-b", "-S", "evaluate.seed=5", "-S", "fits.direct.epochs=3")
    assert "Stage 'likelihood@vae' is cached - skipping run" in second, second
    assert ran_stages(second) == {s for s in STAGES if s.endswith("@direct")} | {"visualize"}
    earlier = repo.json_at(exp_ref(repo, "ev-a"), "metrics/comparison.json")
    assert all(repo.json("metrics/comparison.json")[key]["vae"] == earlier[key]["vae"] for key in ("ais", "iwae", "nelbo"))


def exp_ref(repo: Repo, name: str) -> str:
    (ref,) = [r for r in repo.run("git", "for-each-ref", "--format=%(refname)", "refs/exps/").split()
              if r.endswith("/" + name)]
    return ref


def test_a_module_only_preprocess_imports_marks_preprocess_and_downstream_changed(repo):
    prepare = repo.path / "src/latentfit/data/prepare.py"
    prepare.write_text(prepare.read_text().replace("div_(255.0)", "div_(256.0)"))
    status = repo.dvc("status")
    changed = set(re.findall(r"^(\w+):", status, flags=re.MULTILINE))
    assert changed == {"preprocess"}, status  # dvc status names the stage whose own deps changed ...
    assert ran_stages(repo.dvc("repro", "preprocess")) == {"preprocess"}
    status = repo.dvc("status")  # ... and its new output reaches every stage that reads it (the rest follow)
    changed = set(re.findall(r"^([\w@]+):", status, flags=re.MULTILINE))
    # every stage that reads the prepared data, and evaluate@<fit>, which records their identity
    assert changed == {s for s in STAGES if s.split("@")[0] in ("train", "reference", *BLOCKS)}, status
    assert re.search(r"modified:\s+data/prepared", status), status


def test_a_figure_change_reruns_only_visualize(repo):
    figures = repo.path / "src/latentfit/visualize/drawing.py"
    figures.write_text(figures.read_text().replace('ax.grid(alpha=0.3)', 'ax.grid(alpha=0.4)', 1))
    assert set(re.findall(r"^(\w+):", repo.dvc("status"), flags=re.MULTILINE)) == {"visualize"}
    assert ran_stages(repo.dvc("repro")) == {"visualize"}


def test_queued_experiments_run_two_at_a_time_and_land_in_mlflow(repo):
    import time

    for name, epochs in (("q-one", 1), ("q-two", 4)):
        repo.dvc("exp", "run", "--queue", "-n", name, "-S", f"fits.vae.epochs={epochs}")
    repo.dvc("queue", "start", "-j", "2")
    deadline = time.time() + 600
    while time.time() < deadline:
        status = repo.dvc("queue", "status")
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(3)
    if re.search(r"\b(Queued|Running)\b", status):  # timed out: leave no workers behind
        repo.dvc("queue", "stop", "--kill")
    assert "Failed" not in status, status + "\n" + repo.dvc("queue", "logs", "q-one")

    shown = json.loads(repo.dvc("exp", "show", "--json"))
    done = {e.get("name"): e["revs"][0]["data"] for row in shown for e in (row.get("experiments") or [])}
    for name, epochs in (("q-one", 1), ("q-two", 4)):
        assert done[name]["params"]["params.yaml"]["data"]["fits"]["vae"]["epochs"] == epochs
        assert done[name]["metrics"]["metrics/comparison.json"]["data"]["iwae"]["vae"] > 0

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo.path / 'mlflow.db'}")  # the real repo's store, not a temp copy's
    experiment = client.get_experiment_by_name("latentfit").experiment_id
    for name in ("q-one", "q-two"):
        runs = client.search_runs([experiment], f"tags.dvc_exp = '{name}'")
        assert sorted(r.data.tags["stage"] for r in runs) == sorted((VAE_STAGES & set(TRACKED)) | {"pipeline", "visualize"})
        assert all(r.info.status == "FINISHED" for r in runs)


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (SQLite store, proxied artifacts), as a team would run one."""
    url = f"http://127.0.0.1:{free_port()}"
    args = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
            "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "artifacts")]
    with serving(args, url + "/health", tmp_path / "server.log"):
        yield url


def test_a_shared_tracking_server_gets_the_runs_and_models(repo, mlflow_server):
    from mlflow.tracking import MlflowClient

    repo.env["MLFLOW_TRACKING_URI"] = mlflow_server
    try:
        out = repo.dvc("exp", "run", "-n", "served", "-S", "fits.direct.seed=7", "train@direct")
    finally:
        del repo.env["MLFLOW_TRACKING_URI"]
    assert ran_stages(out) == {"train@direct"}
    assert "MLflow" not in out, "no tracking warning: the server took the run"

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("latentfit").experiment_id], "tags.dvc_exp = 'served'")
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert set(by_stage) == {"pipeline", "train@direct"}
    run = by_stage["train@direct"]
    assert run.data.tags["mlflow.parentRunId"] == by_stage["pipeline"].info.run_id
    assert run.data.params["fits.direct.seed"] == "7" and run.data.tags["git_commit"] != "unknown"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "nll")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "direct.csv" in artifacts and "direct.pt" not in artifacts, "the model is logged once, as a model"
    assert_models_load_back(mlflow_server, by_stage, repo.path)


def test_a_local_remote_round_trip_leaves_a_second_clone_up_to_date(repo, tmp_path):
    repo.dvc("remote", "add", "-d", "team", str(tmp_path / "remote"))
    repo.commit("team remote")
    repo.dvc("push")
    clone = Repo(tmp_path / "clone")
    repo.run("git", "clone", "-q", str(repo.path), str(clone.path))
    clone.dvc("pull")
    assert "up to date" in clone.dvc("status")
    assert ran_stages(clone.dvc("repro")) == set()
    for out in ("models/vae.pt", "models/direct.pt", "data/prepared/test.pt", "plots/figures/tsne.png"):
        assert (clone.path / out).read_bytes() == (repo.path / out).read_bytes(), out


def test_a_2d_latent_space_is_drawn_directly(repo):
    out = repo.dvc("exp", "run", "-n", "z2", "-S", "model.z_dim=2")
    assert ran_stages(out) == set(STAGES) - {"download", "preprocess", "reference"}
    drawn = {f.stem for f in (repo.path / "plots/figures").glob("*.png")}
    assert drawn == expected(z_dim=2) and "latent_manifold" in drawn and "tsne" not in drawn
    from PIL import Image

    with Image.open(repo.path / "plots/figures/latent_manifold.png") as image:
        assert image.width > 1.5 * image.height, "both decoders side by side"


def test_a_third_fit_is_one_params_entry(repo):
    """Adding `iwae8` (kind vae, iwae_k: 8) to params.yaml, with nothing else edited: `dvc repro` trains and
    evaluates it alone (the notebook's two fits are up to date), and it is in every table, curve, figure, MLflow
    run and the registry; dvc.yaml's deps still match the code."""
    params = yaml.safe_load((repo.path / "params.yaml").read_text())
    params["fits"]["iwae8"] = {"kind": "vae", "epochs": 2, "batch_size": 64, "iwae_k": 8}
    (repo.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = repo.dvc("repro")
    assert ran_stages(out) == {f"{block}@iwae8" for block in ("train", *BLOCKS)} | {"visualize"}
    assert {f"{block}@iwae8" for block in ("train", *BLOCKS)} <= set(re.findall(r"^(\S+)", repo.dvc("stage", "list"),
                                                                            flags=re.MULTILINE))
    head, details = repo.json("metrics/comparison.json"), repo.json("metrics/comparison_details.json")
    assert head["ais"]["iwae8"] == details["fits"]["iwae8"]["test"]["ais_nll"]
    assert head["ais"]["gap_iwae8"] == details["pairs"]["iwae8"]["gap"]["ais"]["mean"]
    assert head["ais"]["gap"] == details["pairs"]["direct"]["gap"]["ais"]["mean"]  # the notebook's columns stay
    trained = repo.json("metrics/train/iwae8.json")["train"]  # its -ELBO, and the bound it trained, named with k
    assert trained.keys() == {"iwae8", "iwae8_iwae_k8"} and trained["iwae8_iwae_k8"] < trained["iwae8"]
    report = (repo.path / "metrics/report.md").read_text()
    assert "iwae8" in report.splitlines()[0] and f"{head['ais']['iwae8']:.2f}" in report
    for curve in ("training", "prior_mc", "denoise", "estimators", "rate_distortion"):
        assert set(pd.read_csv(repo.path / f"plots/{curve}.csv")["fit"]) == {"vae", "direct", "iwae8"}, curve
    from PIL import Image

    with Image.open(repo.path / "plots/figures/training_curves.png") as image:
        assert image.width > 2.5 * image.height, "a panel per fit: three side by side"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo.path / 'mlflow.db'}")
    (version,) = client.search_model_versions("name = 'latentfit-iwae8-decoder'")
    assert float(version.tags["ais_nll"]) == pytest.approx(head["ais"]["iwae8"], abs=1e-5)
    repo.run(sys.executable, "-m", "latentfit.dag")  # exits 1 if a stage's deps or params drifted
