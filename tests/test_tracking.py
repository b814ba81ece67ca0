"""MLflow tracking: unreachable stores never cost a stage its outputs; parallel writers all land."""

import multiprocessing as mp
import socket

import pytest

from latentfit.core.tracking import TrackingError, TrackingWarning, pipeline_tags, stage_run, tracking_uri


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_default_store_is_mlflow_db_at_the_dvc_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking_uri() == "http://tracking:5000"


def test_unreachable_store_warns_once_and_the_stage_goes_on(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_port_uri())
    done = []

    def stage() -> None:
        with stage_run("train_vae", {"a": 1}) as run:
            run.log_epoch({"epoch": 1, "rec": 1.0})
            run.log_metrics({"x": {"y": 2.0}})
            done.append(True)

    with pytest.warns(TrackingWarning, match=r"unreachable.*dvc repro -f train_vae") as caught:
        stage()
    assert done and len(caught) == 1


def test_required_store_fails_fast(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_port_uri())
    ran = []
    with pytest.raises(TrackingError, match="tracking.required: false"), stage_run("train_vae", {}, required=True):
        ran.append(True)
    assert not ran


def test_experiment_name_groups_the_runs(monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-exp")
    tags = pipeline_tags("evaluate", {"data.dataset": "kmnist"})
    assert tags["dvc_exp"] == tags["pipeline"] == "lucky-exp" and tags["dataset"] == "kmnist"
    monkeypatch.delenv("DVC_EXP_NAME")
    plain = pipeline_tags("evaluate", {"data.dataset": "kmnist"})
    assert plain["dvc_exp"] == "workspace" and plain["pipeline"] == pipeline_tags("train_vae", {"data.dataset": "kmnist"})["pipeline"]


def _log_epochs(uri: str, name: str) -> None:
    import os

    os.environ["MLFLOW_TRACKING_URI"] = uri
    with stage_run(name, {"who": name}, required=True) as run:
        for epoch in range(1, 6):
            run.log_epoch({"epoch": epoch, "loss": float(epoch)})


@pytest.mark.slow  # processes side by side
def test_parallel_writers_to_one_sqlite_store_all_land(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_log_epochs, args=(uri, f"stage{i}")) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("latentfit").experiment_id], "tags.stage != 'pipeline'")
    assert sorted(r.data.tags["stage"] for r in runs) == [f"stage{i}" for i in range(4)]
    for r in runs:
        assert r.info.status == "FINISHED"
        assert len(client.get_metric_history(r.info.run_id, "loss")) == 5


def test_a_pipeline_is_one_parent_run_and_models_load_back_with_mlflow(monkeypatch, tmp_path):
    import os

    import mlflow.pytorch
    import torch
    from mlflow.tracking import MlflowClient

    from latentfit.core.fits import registered_name
    from latentfit.model.networks import Decoder
    from latentfit.model.registry import file_md5, log_direct

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model_file = tmp_path / "direct.pt"
    model_file.write_bytes(b"the DVC output the model came from")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    decoder = Decoder(z_dim=2, hidden=8)
    for exp in ("grid-a", "grid-b"):
        monkeypatch.setenv("DVC_EXP_NAME", exp)
        for stage, value in (("train_direct", 1.5), ("evaluate", 2.5)):
            with stage_run(stage, {"model.z_dim": 2, "evaluate.flip_probs": (0.0, 0.1)}) as run:
                run.log_epoch({"epoch": 1, "nll": 9.0})
                run.log_metrics({"test": {"nll": value}})
                if stage == "train_direct":
                    run.call(log_direct, decoder, model_file, "direct")

    assert "MLFLOW_TRACKING_URI" not in os.environ, "the default store stays the default"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_experiment_by_name("latentfit").artifact_location == (tmp_path / "mlartifacts").as_uri()
    experiment = client.get_experiment_by_name("latentfit").experiment_id
    (parent,) = client.search_runs([experiment], "tags.dvc_exp = 'grid-a' and tags.stage = 'pipeline'")
    children = client.search_runs([experiment], "tags.dvc_exp = 'grid-a' and tags.stage != 'pipeline'")
    assert sorted(r.data.tags["stage"] for r in children) == ["evaluate", "train_direct"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    # the parent row holds what `dvc exp show` would: the params and each stage's final metrics
    assert parent.data.metrics == {"train_direct.test.nll": 1.5, "evaluate.test.nll": 2.5}
    assert parent.data.params["model.z_dim"] == "2" and parent.data.params["evaluate.flip_probs"] == "[0.0, 0.1]"
    assert parent.info.status == "FINISHED"
    assert len(client.search_runs([experiment], "tags.stage = 'pipeline'")) == 2

    trained = next(r for r in children if r.data.tags["stage"] == "train_direct")
    loaded = mlflow.pytorch.load_model(f"runs:/{trained.info.run_id}/decoder")  # torch.export: no pickle
    z = torch.randn(5, 2)
    torch.testing.assert_close(loaded(z), torch.sigmoid(decoder(z)))  # z -> Bernoulli means
    versions = client.search_model_versions(f"name = '{registered_name('direct')}'")  # latentfit-direct-decoder
    assert len(versions) == 2 and {v.tags["dvc_md5"] for v in versions} == {file_md5(model_file)}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e39])
def test_a_served_decoder_refuses_a_latent_that_is_not_finite(bad):
    """What MLflow serves is the torch.export program of BernoulliMeans: a non-finite z raises there (the
    scoring server answers 400), where the decoder alone would answer NaN images."""
    import torch

    from latentfit.model.networks import Decoder
    from latentfit.model.registry import BernoulliMeans

    decoder = Decoder(z_dim=3, hidden=8)
    program = torch.export.export(BernoulliMeans(decoder).eval(), (torch.zeros(2, 3),),
                                  dynamic_shapes={"z": {0: torch.export.Dim("n")}}).module()
    z = torch.randn(4, 3)
    torch.testing.assert_close(program(z), torch.sigmoid(decoder(z)))
    z[2, 1] = torch.tensor(bad, dtype=torch.float32)  # 1e39 overflows float32 to inf
    with pytest.raises(RuntimeError, match="finite"):
        program(z)
