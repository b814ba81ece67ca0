"""Held-out likelihood estimators that need no Markov chain: the VAE's ELBO, prior sampling and
IWAE, each per image, so two fits can be compared on the same images as a paired difference.
(AIS, the tightest, is in ais.py.) Every random draw comes from a passed generator."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from latentfit.core.stats import standard_error
from latentfit.model.likelihood import elbo_terms, log_importance_weights, pairwise_bernoulli_log_prob
from latentfit.model.networks import VAE, Decoder


@torch.no_grad()
def vae_elbo_terms(vae: VAE, x: torch.Tensor, generator: torch.Generator,
                   batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per test image, the reconstruction and KL terms of -ELBO at one reparameterised draw."""
    vae.eval()
    parts = []
    for y in x.split(batch_size):
        noise = torch.randn(len(y), vae.decoder.z_dim, generator=generator, device=y.device)
        parts.append(elbo_terms(y, *vae(y, noise)))
    return torch.cat([rec for rec, _ in parts]), torch.cat([kl for _, kl in parts])


def vae_elbo(vae: VAE, x: torch.Tensor, generator: torch.Generator, batch_size: int = 1000) -> dict[str, float]:
    """Test-set rec, kl and neg_elbo (nats per image) at one reparameterised draw per image."""
    rec, kl = vae_elbo_terms(vae, x, generator, batch_size)
    return {"neg_elbo": (rec + kl).mean().item(), "rec": rec.mean().item(), "kl": kl.mean().item()}


@dataclass
class Sampled:
    """An importance-sampling run, per image: log p(y) estimates by sample size (M or k), the effective
    sample size of all the draws, and the log weights of the first images when kept (images, draws)."""

    log_p: dict[int, torch.Tensor]
    ess: torch.Tensor
    log_w: torch.Tensor | None = None


@torch.no_grad()
def prior_mc_sampled(decoder: Decoder, x: torch.Tensor, draws: torch.Tensor, sizes: list[int],
                     batch_size: int = 1000, chunk: int = 4096, keep: int = 0) -> Sampled:
    """Per image, log (1/M) sum_{m<=M} p(y | z_m) for each M in `sizes` (the first M of `draws`), the
    ESS of all the draws, and the log weights log p(y | z_m) of the first `keep` images.

    One pass over the draws with a running logsumexp per image, so any M fits in memory.
    """
    decoder.eval()
    sizes = sorted({min(m, len(draws)) for m in sizes})
    edges = sorted(set(range(0, len(draws), chunk)) | set(sizes) | {len(draws)})
    segments = [(end, decoder(draws[start:end])) for start, end in itertools.pairwise(edges)]
    parts: dict[int, list[torch.Tensor]] = {m: [] for m in sizes}
    ess, kept = [], []
    for i, y in enumerate(x.split(batch_size)):
        running = torch.full((len(y),), -torch.inf, device=y.device)
        squares = running.clone()
        keep_here = max(0, min(keep - i * batch_size, len(y)))
        weights = []
        for end, logits in segments:
            log_w = pairwise_bernoulli_log_prob(y, logits)
            running = torch.logaddexp(running, torch.logsumexp(log_w, 1))
            squares = torch.logaddexp(squares, torch.logsumexp(2 * log_w, 1))
            if keep_here:
                weights.append(log_w[:keep_here])
            if end in parts:
                parts[end].append(running - math.log(end))
        ess.append(torch.exp(2 * running - squares))
        if weights:
            kept.append(torch.cat(weights, 1))
    return Sampled({m: torch.cat(p) for m, p in parts.items()}, torch.cat(ess), torch.cat(kept) if kept else None)


def prior_mc_log_prob(decoder: Decoder, x: torch.Tensor, draws: torch.Tensor, sizes: list[int],
                      batch_size: int = 1000, chunk: int = 4096) -> dict[int, torch.Tensor]:
    """Per image, log (1/M) sum_{m<=M} p(y | z_m) for each M in `sizes` (the first M of `draws`)."""
    return prior_mc_sampled(decoder, x, draws, sizes, batch_size, chunk).log_p


def prior_mc_curve(decoder: Decoder, x: torch.Tensor, draws: torch.Tensor, sizes: list[int],
                   batch_size: int = 1000, chunk: int = 4096) -> dict[int, float]:
    """Mean over images of -log (1/M) sum_{m<=M} p(y | z_m), for each M in `sizes`."""
    curve = prior_mc_log_prob(decoder, x, draws, sizes, batch_size, chunk)
    return {m: -v.mean().item() for m, v in curve.items()}


def prior_mc_nll(decoder: Decoder, x: torch.Tensor, draws: torch.Tensor, batch_size: int = 1000,
                 chunk: int = 4096) -> float:
    """Mean over images of -log (1/M) sum_m p(y | z_m) for the given M prior draws (M x z_dim)."""
    return prior_mc_curve(decoder, x, draws, [len(draws)], batch_size, chunk)[len(draws)]


@torch.no_grad()
def iwae_sampled(model: VAE, y: torch.Tensor, ks: list[int], generator: torch.Generator,
                 rows: int = 16384) -> Sampled:
    """Per image, the IWAE estimate log (1/k) sum_{i<=k} p(y, z_i) / q(z_i | y), z_i ~ q(z | y), for each
    k in `ks` (the first k of one stream of draws), with the ESS and the log weights of all the draws.

    A stochastic lower bound on log p(y) that rises with k. Draws are decoded about `rows` at a time.
    """
    model.eval()
    mu, logvar = model.encoder(y)
    std, per_chunk = torch.exp(0.5 * logvar), max(1, rows // len(y))
    ks = sorted(set(ks))
    edges = sorted(set(range(0, ks[-1], per_chunk)) | set(ks))  # starts at 0
    running, out, weights = torch.full((len(y),), -torch.inf, device=y.device), {}, []
    for start, end in itertools.pairwise(edges):
        eps = torch.randn(end - start, *mu.shape, generator=generator, device=y.device)
        z = mu + std * eps
        log_w = log_importance_weights(y, model.decoder(z), z, mu, logvar)
        weights.append(log_w.T)
        running = torch.logaddexp(running, torch.logsumexp(log_w, 0))
        if end in ks:
            out[end] = running - math.log(end)
    log_w = torch.cat(weights, 1)
    return Sampled(out, effective_sample_size(log_w), log_w)


def iwae_log_prob_curve(model: VAE, y: torch.Tensor, ks: list[int], generator: torch.Generator,
                        rows: int = 16384) -> dict[int, torch.Tensor]:
    """Per image, the IWAE estimate for each k in `ks` (the first k of one stream of draws)."""
    return iwae_sampled(model, y, ks, generator, rows).log_p


def iwae_log_prob(model: VAE, y: torch.Tensor, k: int, generator: torch.Generator, rows: int = 16384) -> torch.Tensor:
    """The IWAE estimate with k importance samples, per image."""
    return iwae_log_prob_curve(model, y, [k], generator, rows)[k]


def iwae_nll(model: VAE, x: torch.Tensor, k: int, generator: torch.Generator,
             batch_size: int = 32) -> tuple[float, float]:
    """Mean IWAE negative log-likelihood over images, and its standard error across images."""
    nll = -torch.cat([iwae_log_prob(model, y, k, generator) for y in x.split(batch_size)])
    return nll.mean().item(), standard_error(nll)


def effective_sample_size(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """(sum w)^2 / sum w^2 along `dim`: between 1 (one weight carries all) and the number of weights (in log
    space, so float32 weights far below 1 lose nothing)."""
    return torch.exp(2 * torch.logsumexp(log_w, dim) - torch.logsumexp(2 * log_w, dim))
