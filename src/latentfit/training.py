"""Epoch loops for both fits. Each yields one record per epoch; the caller logs and checkpoints.

Batches are sliced from tensors already on the device, and per-batch sums stay on the device:
the loops sync with the host once per epoch, not once per batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch
from torch import nn

from .errors import TrainingError
from .likelihood import elbo_terms, mc_marginal_log_prob
from .models import VAE, Decoder

__all__ = ["TrainingError", "fit_classifier", "fit_direct", "fit_vae", "make_optimizer", "posthoc_encoder"]


def make_optimizer(module: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam, with the fused kernel (one launch for all parameters) where this torch has it."""
    try:
        return torch.optim.Adam(module.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(module.parameters(), lr=lr)


def _batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    return torch.randperm(n, generator=generator, device=device).split(batch_size)


def _check_finite(record: dict, what: str) -> None:
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise TrainingError(
            f"{what}: {', '.join(bad)} became {record[bad[0]]} in epoch {record['epoch']}. "
            f"The optimisation diverged: lower {what}.lr in params.yaml and re-run."
        )


def fit_vae(model: VAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, *, epochs: int, batch_size: int,
            generator: torch.Generator, start_epoch: int = 0) -> Iterator[dict]:
    """Maximise the ELBO (L = 1) by Adam over shuffled batches; yield epoch-average rec, kl, neg_elbo."""
    n, z_dim = len(x), model.decoder.z_dim
    for epoch in range(start_epoch + 1, epochs + 1):
        start = time.perf_counter()
        model.train()
        sums = torch.zeros(2, device=x.device)
        for idx in _batches(n, batch_size, generator, x.device):
            y = x[idx]
            noise = torch.randn(len(idx), z_dim, generator=generator, device=x.device)
            rec, kl = elbo_terms(y, *model(y, noise))
            loss = rec.mean() + kl.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([rec.detach().sum(), kl.detach().sum()])
        rec_avg, kl_avg = (sums / n).tolist()
        record = {"epoch": epoch, "rec": rec_avg, "kl": kl_avg, "neg_elbo": rec_avg + kl_avg,
                  "seconds": time.perf_counter() - start}
        _check_finite(record, "train_vae")
        yield record


def fit_direct(decoder: Decoder, optimizer: torch.optim.Optimizer, x: torch.Tensor, *, epochs: int,
               batch_size: int, mc_samples: int, generator: torch.Generator,
               fixed_draws: torch.Tensor | None = None, start_epoch: int = 0) -> Iterator[dict]:
    """Maximise the MC marginal likelihood log (1/M) sum_m p(y | z_m), z_m ~ N(0, I).

    With `fixed_draws` (M x z_dim) the same draws serve every batch (a deterministic objective);
    without, M fresh draws are taken per batch (unbiased for p(y), noisier).
    """
    n = len(x)
    for epoch in range(start_epoch + 1, epochs + 1):
        start = time.perf_counter()
        decoder.train()
        total = torch.zeros((), device=x.device)
        for idx in _batches(n, batch_size, generator, x.device):
            z = fixed_draws if fixed_draws is not None else torch.randn(
                mc_samples, decoder.z_dim, generator=generator, device=x.device)
            nll = -mc_marginal_log_prob(x[idx], decoder(z))
            optimizer.zero_grad(set_to_none=True)
            nll.mean().backward()
            optimizer.step()
            total += nll.detach().sum()
        record = {"epoch": epoch, "nll": total.item() / n, "seconds": time.perf_counter() - start}
        _check_finite(record, "train_direct")
        yield record


def posthoc_encoder(decoder: Decoder, hidden: int) -> VAE:
    """A fresh encoder in front of a frozen decoder: train it with `fit_vae` and an optimiser over
    `.encoder` only. Gives the direct fit (which has none) an encoder for importance sampling."""
    model = VAE(decoder.z_dim, hidden).to(next(decoder.parameters()).device)
    model.decoder = decoder.requires_grad_(False)
    return model


def fit_classifier(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor, *,
                   epochs: int, batch_size: int, generator: torch.Generator) -> Iterator[dict]:
    """Cross-entropy training of the feature classifier; yields the epoch's mean loss."""
    for epoch in range(1, epochs + 1):
        model.train()
        total = torch.zeros((), device=x.device)
        for idx in _batches(len(x), batch_size, generator, x.device):
            loss = nn.functional.cross_entropy(model(x[idx]), labels[idx], reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            (loss / len(idx)).backward()
            optimizer.step()
            total += loss.detach()
        yield {"epoch": epoch, "loss": total.item() / len(x)}
