"""Epoch loops for both fits (the training stages' code; evaluate runs fit_vae for its post-hoc
encoders). Each yields one record per epoch; the caller logs and checkpoints.

Batches are sliced from tensors already on the device, and per-batch sums stay on the device:
the loops sync with the host once per epoch, not once per batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch
from torch import nn

from latentfit.core.errors import TrainingError
from latentfit.model.likelihood import bernoulli_log_prob, elbo_terms, gaussian_kl, iwae_bound, mc_marginal_log_prob
from latentfit.model.networks import VAE, Decoder

__all__ = ["TrainingError", "batches", "fit_direct", "fit_vae", "make_optimizer"]


def make_optimizer(module: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam, with the fused kernel (one launch for all parameters) where this torch has it."""
    try:
        return torch.optim.Adam(module.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(module.parameters(), lr=lr)


def batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    return torch.randperm(n, generator=generator, device=device).split(batch_size)


def _draw(y: torch.Tensor, dynamic: bool, generator: torch.Generator) -> torch.Tensor:
    return torch.bernoulli(y, generator=generator) if dynamic else y


def _check_finite(record: dict, what: str, lr_key: str) -> None:
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise TrainingError(
            f"{what}: {', '.join(bad)} became {record[bad[0]]} in epoch {record['epoch']}. "
            f"The optimisation diverged: lower {lr_key} in params.yaml and re-run."
        )


def fit_vae(model: VAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, *, epochs: int, batch_size: int,
            generator: torch.Generator, start_epoch: int = 0, what: str = "train@vae",
            lr_key: str = "fits.vae.lr", dynamic: bool = False, iwae_k: int = 1) -> Iterator[dict]:
    """Maximise the ELBO (L = 1) by Adam over shuffled batches; yield epoch-average rec, kl, neg_elbo.
    `what` and `lr_key` name the fit and its learning-rate param in the error a divergence raises;
    `dynamic`: each batch is a fresh Bernoulli draw from the grey images (dynamic binarisation).
    `iwae_k` > 1: maximise the IWAE bound with k draws instead (the same encoder); the record adds its
    epoch average `neg_iwae`, and rec, kl and neg_elbo are the ELBO's at the first of the k draws."""
    n = len(x)
    for epoch in range(start_epoch + 1, epochs + 1):
        start = time.perf_counter()
        model.train()
        sums = torch.zeros(2 if iwae_k == 1 else 3, device=x.device)
        for idx in batches(n, batch_size, generator, x.device):
            loss, terms = _vae_loss(model, _draw(x[idx], dynamic, generator), generator, iwae_k)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += terms
        rec_avg, kl_avg, *bound = (sums / n).tolist()
        record = {"epoch": epoch, "rec": rec_avg, "kl": kl_avg, "neg_elbo": rec_avg + kl_avg,
                  **({"neg_iwae": bound[0]} if bound else {}), "seconds": time.perf_counter() - start}
        _check_finite(record, what, lr_key)
        yield record


def vae_objective(record: dict) -> float:
    """What an epoch of `fit_vae` minimised: its -IWAE bound (iwae_k > 1), else its -ELBO."""
    return record.get("neg_iwae", record["neg_elbo"])


def _vae_loss(model: VAE, y: torch.Tensor, generator: torch.Generator, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's loss, and its summed (rec, kl) terms (with k > 1, at the first draw, and -IWAE bound)."""
    z_dim = model.decoder.z_dim
    if k == 1:
        noise = torch.randn(len(y), z_dim, generator=generator, device=y.device)
        rec, kl = elbo_terms(y, *model(y, noise))
        return rec.mean() + kl.mean(), torch.stack([rec.detach().sum(), kl.detach().sum()])
    mu, logvar = model.encoder(y)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(k, len(y), z_dim, generator=generator, device=y.device)
    logits = model.decoder(z)
    bound = iwae_bound(y, logits, z, mu, logvar)
    with torch.no_grad():
        terms = torch.stack([-bernoulli_log_prob(y, logits[0]).sum(), gaussian_kl(mu, logvar).sum(), -bound.sum()])
    return -bound.mean(), terms


def fit_direct(decoder: Decoder, optimizer: torch.optim.Optimizer, x: torch.Tensor, *, epochs: int,
               batch_size: int, mc_samples: int, generator: torch.Generator,
               fixed_draws: torch.Tensor | None = None, start_epoch: int = 0, dynamic: bool = False,
               what: str = "train@direct", lr_key: str = "fits.direct.lr") -> Iterator[dict]:
    """Maximise the MC marginal likelihood log (1/M) sum_m p(y | z_m), z_m ~ N(0, I).

    With `fixed_draws` (M x z_dim) the same draws serve every batch (a deterministic objective);
    without, M fresh draws are taken per batch (unbiased for p(y), noisier). `dynamic`: as in fit_vae.
    """
    n = len(x)
    for epoch in range(start_epoch + 1, epochs + 1):
        start = time.perf_counter()
        decoder.train()
        total = torch.zeros((), device=x.device)
        for idx in batches(n, batch_size, generator, x.device):
            z = fixed_draws if fixed_draws is not None else torch.randn(
                mc_samples, decoder.z_dim, generator=generator, device=x.device)
            nll = -mc_marginal_log_prob(_draw(x[idx], dynamic, generator), decoder(z))
            optimizer.zero_grad(set_to_none=True)
            nll.mean().backward()
            optimizer.step()
            total += nll.detach().sum()
        record = {"epoch": epoch, "nll": total.item() / n, "seconds": time.perf_counter() - start}
        _check_finite(record, what, lr_key)
        yield record
