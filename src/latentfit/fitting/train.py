"""What `train@<fit>` runs for each kind of fit: the model, its optimiser, its epoch loop, the line it prints
per epoch, the name and value of the objective it minimised, its model file and its registered models.
The stage drives any kind the same way (checkpoint, history, MLflow), so a kind is one function here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from latentfit.core.config import DirectFitParams, ModelParams, VaeFitParams
from latentfit.core.errors import ParamsError
from latentfit.fitting.loops import fit_direct, fit_vae, make_optimizer
from latentfit.model.files import model_file
from latentfit.model.networks import PIXELS, VAE, Decoder
from latentfit.model.registry import log_direct, log_training_data, log_vae


@dataclass
class Trainer:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    epochs: Callable[[int], Iterator[dict]]  # from the epochs already done (a resumed checkpoint's)
    line: Callable[[dict], str]  # the notebook-style line of an epoch
    objective: Callable[[dict], dict[str, float]]  # the final record's objectives, by names that say which
    terms: Callable[[dict], dict[str, float]]  # every term of the final record, for MLflow (`neg_iwae_k8`)
    model_file: Callable[[torch.device], dict[str, Any]]
    register: Callable[[str], None]  # log and register the servable models, given the model file's path
    log_data: Callable[[str], None] = log_training_data


def train_vae(fit: str, p: VaeFitParams, m: ModelParams, x: torch.Tensor, generator: torch.Generator,
              dynamic: bool) -> Trainer:
    model = VAE(m.z_dim, m.hidden).to(x.device)
    optimizer = make_optimizer(model, p.lr)
    bound = f"{fit}_iwae_k{p.iwae_k}"  # the -IWAE(k) bound's column: `train.vae_iwae_k8`

    def epochs(done: int) -> Iterator[dict]:
        return fit_vae(model, optimizer, x, epochs=p.epochs, batch_size=p.batch_size, generator=generator,
                       start_epoch=done, dynamic=dynamic, iwae_k=p.iwae_k, what=f"train@{fit}",
                       lr_key=f"fits.{fit}.lr")

    def line(r: dict) -> str:
        iwae = f"  -IWAE({p.iwae_k})={r['neg_iwae']:.2f}" if "neg_iwae" in r else ""
        return f"{fit} epoch {r['epoch']:2d}  rec={r['rec']:.2f}  kl={r['kl']:.2f}  -ELBO={r['neg_elbo']:.2f}{iwae}"

    def objective(r: dict) -> dict[str, float]:  # `train.<fit>` is its -ELBO, always; the -IWAE bound when k > 1
        return {fit: r["neg_elbo"]} | ({bound: r["neg_iwae"]} if "neg_iwae" in r else {})

    def terms(r: dict) -> dict[str, float]:
        return {k: r[k] for k in ("rec", "kl", "neg_elbo")} | ({f"neg_iwae_k{p.iwae_k}": r["neg_iwae"]}
                                                               if "neg_iwae" in r else {})

    return Trainer(model, optimizer, epochs, line, objective, terms,
                   lambda device: model_file(model, trained_on=device.type),
                   lambda path: log_vae(model, x, path, fit))


def train_direct(fit: str, p: DirectFitParams, m: ModelParams, x: torch.Tensor, generator: torch.Generator,
                 dynamic: bool) -> Trainer:
    decoder = Decoder(m.z_dim, m.hidden).to(x.device)
    optimizer = make_optimizer(decoder, p.lr)
    # drawn first from the seed, so a resumed checkpoint's generator state follows the same draws
    draws = torch.randn(p.mc_samples, m.z_dim, generator=generator, device=x.device) if p.fixed_samples else None

    def epochs(done: int) -> Iterator[dict]:
        return fit_direct(decoder, optimizer, x, epochs=p.epochs, batch_size=p.batch_size, mc_samples=p.mc_samples,
                          generator=generator, fixed_draws=draws, start_epoch=done, dynamic=dynamic,
                          what=f"train@{fit}", lr_key=f"fits.{fit}.lr")

    # The training draws are kept: evaluation reports the NLL under exactly these draws.
    return Trainer(decoder, optimizer, epochs,
                   lambda r: f"{fit} epoch {r['epoch']:2d}  MC marginal NLL={r['nll']:.2f}",
                   lambda r: {fit: r["nll"]},  # `train.<fit>`: the MC NLL with its M draws
                   lambda r: {"nll": r["nll"]},
                   lambda device: model_file(decoder, train_draws=draws, trained_on=device.type),
                   partial(log_direct, decoder, fit=fit))


FLOAT = 4  # bytes


def batch_bytes(p: VaeFitParams | DirectFitParams, m: ModelParams) -> tuple[str, int, int]:
    """The param that scales a training step's memory, its value, and the bytes one step keeps for its backward
    pass (an estimate: the k or M decoded images' logits and their loss's intermediates, the hidden layer)."""
    if isinstance(p, VaeFitParams):  # k draws per image: k x batch rows through the decoder
        return "iwae_k", p.iwae_k, FLOAT * p.batch_size * (4 * PIXELS + 3 * m.hidden + 4 * m.z_dim)
    # M prior draws shared by the batch: M decoded images, and a batch x M matrix of log-likelihoods
    return "mc_samples", p.mc_samples, FLOAT * (4 * PIXELS + 3 * m.hidden + 3 * p.batch_size)


def check_memory(fit: str, p: VaeFitParams | DirectFitParams, m: ModelParams, available: int) -> None:
    """Refuse, before any training, a sample count whose step would not fit in half the `available` bytes,
    naming the param and the largest value that fits (rather than dying by the OOM killer without a word)."""
    key, value, per_sample = batch_bytes(p, m)
    need, budget = value * per_sample, available // 2
    if need > budget:
        fits = max(1, budget // per_sample)
        raise ParamsError(f"fits.{fit}.{key} = {value} needs about {need / 2**30:.1f} GiB per training step, over half "
                          f"of the {available / 2**30:.1f} GiB free: set fits.{fit}.{key} to {fits} or less (or lower "
                          f"fits.{fit}.batch_size)")


def free_memory(device: torch.device) -> int:
    """Bytes free on the device: the GPU's own memory, else the host's."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)
