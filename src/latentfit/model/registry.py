"""The fitted models as MLflow models people can load and serve: each decoder as z -> Bernoulli means and
the VAE's encoder as y -> [mu | logvar], exported with torch.export (no pickle: loading runs no code of
ours), with signatures and input examples, registered under stable names. Each version is tagged with
the DVC hash of the model file it came from, so the evaluate stage finds the versions it measured, links
its held-out numbers to them, and moves the alias `best-<dataset>` to the version with the lowest AIS NLL.

Every call here goes through the stage's MLflow run (`StageRun.call`): a failure costs a warning, never
the stage's DVC outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from latentfit.core.fits import registered_name
from latentfit.core.io import file_md5
from latentfit.model.networks import VAE, Decoder

DVC_MD5 = "dvc_md5"  # version tag: the md5 DVC records for the model file


class BernoulliMeans(nn.Module):
    """z (n x d) -> the Bernoulli means sigmoid(f_theta(z)) of the 784 pixels: images."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # exported with the model: a served decoder answers a z holding NaN or inf with 400, not with NaN images
        torch._assert_async(torch.isfinite(z).all(), "z holds NaN or inf: every latent must be a finite number")
        return torch.sigmoid(self.decoder(z))


class GaussianPosterior(nn.Module):
    """y (n x 784, in [0, 1]) -> [mu | logvar] (n x 2d) of the VAE's q(z | y)."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.encoder = vae.encoder

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        torch._assert_async(torch.isfinite(y).all(), "y holds NaN or inf: pixels must be numbers in [0, 1]")
        mu, logvar = self.encoder(y)
        return torch.cat([mu, logvar], dim=-1)


def log_servable(module: nn.Module, name: str, registered: str, example: np.ndarray, md5: str) -> None:
    """Log `module` under the active run as `name`, registered as `registered`, its version tagged with
    `md5`, the DVC hash of the model file it came from."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    module = module.cpu().eval()
    with torch.no_grad():
        output = module(torch.from_numpy(example)).numpy()
    info = mlflow.pytorch.log_model(
        module, name=name, serialization_format="pt2", input_example=example,
        signature=infer_signature(example, output), registered_model_name=registered,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    client = mlflow.MlflowClient()
    version = info.registered_model_version
    client.set_model_version_tag(registered, str(version), DVC_MD5, md5)
    # the version's own model_id is not filled in by every registry store: keep the logged model's id with it
    client.set_model_version_tag(registered, str(version), "model_id", info.model_id)


def log_training_data(dataset: str, lock: str | Path = "dvc.lock", prepared: str = "data/prepared") -> None:
    """The prepared data as the run's MLflow dataset input: its digest is the hash DVC recorded for
    data/prepared in dvc.lock, so the runs table's Dataset column names the very data DVC tracked."""
    import mlflow
    import yaml
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.meta_dataset import MetaDataset

    stages = (yaml.safe_load(Path(lock).read_text()) or {}).get("stages", {}) if Path(lock).is_file() else {}
    outs = stages.get("preprocess", {}).get("outs", [])
    md5 = next((o.get("md5", "") for o in outs if o.get("path") == prepared), "").removesuffix(".dir")
    if not md5:
        return  # the prepared data were not made by `dvc repro` here: nothing to name them by
    # the registry's source for file:// URIs (a class it makes at run time, so it is looked up by name)
    local: Any = next(s for s in get_registered_sources() if getattr(s, "__name__", "") == "LocalArtifactDatasetSource")
    source = local(Path(prepared).resolve().as_uri())
    data = MetaDataset(source, name=f"{dataset} (prepared)", digest=md5[:8])  # type: ignore[abstract]  # stubs only
    mlflow.log_input(data, context="training")


def log_vae(vae: VAE, images: torch.Tensor, model_file: str | Path, fit: str) -> None:
    """A VAE fit's decoder (from two prior draws) and its encoder (from two training images):
    `latentfit-<fit>-decoder` and `latentfit-<fit>-encoder`."""
    g = torch.Generator().manual_seed(0)
    z, md5 = torch.randn(2, vae.decoder.z_dim, generator=g).numpy(), file_md5(model_file)
    log_servable(BernoulliMeans(vae.decoder), "decoder", registered_name(fit), z, md5)
    log_servable(GaussianPosterior(vae), "encoder", registered_name(fit, "encoder"),
                 images[:2].detach().cpu().float().numpy(), md5)


def log_direct(decoder: Decoder, model_file: str | Path, fit: str) -> None:
    """A direct fit's decoder, `latentfit-<fit>-decoder`."""
    z = torch.randn(2, decoder.z_dim, generator=torch.Generator().manual_seed(0)).numpy()
    log_servable(BernoulliMeans(decoder), "decoder", registered_name(fit), z, file_md5(model_file))


def link_and_rank(model_md5: dict[str, str], metrics: dict[str, dict[str, float]], dataset: str) -> None:
    """For each fit's registered decoder version (found by its model file's DVC hash `model_md5[fit]`): log the held-out
    `metrics[fit]` linked to it, tag it with its AIS NLL, and give it the alias `best-<dataset>` when no
    version of that name has a lower AIS NLL on this dataset."""
    import mlflow

    client = mlflow.MlflowClient()
    alias = f"best-{dataset}"
    for fit, md5 in model_md5.items():
        name = registered_name(fit)
        versions = client.search_model_versions(f"name = '{name}' and tags.{DVC_MD5} = '{md5}'")
        if not versions:
            continue  # trained while the store was unreachable
        version = max(versions, key=lambda v: int(v.version))
        ais = metrics[fit]["ais_nll"]
        model_id = getattr(version, "model_id", None) or version.tags.get("model_id")
        if model_id:
            mlflow.log_metrics({f"test.{k}": v for k, v in metrics[fit].items()}, model_id=model_id)
        client.set_model_version_tag(name, version.version, "ais_nll", f"{ais:.6f}")
        client.set_model_version_tag(name, version.version, "dataset", dataset)
        if ais < _holder_ais(client, name, alias):
            client.set_registered_model_alias(name, alias, version.version)


def _holder_ais(client: Any, name: str, alias: str) -> float:
    from mlflow.exceptions import MlflowException

    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no version holds the alias yet
        return float("inf")
    return float(holder.tags.get("ais_nll", "inf"))
