"""The comparison metrics. Nothing here draws; every random draw comes from a passed generator."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.manifold import TSNE

from .inference import prior_search, vae_reconstruct
from .likelihood import bernoulli_log_prob, elbo_terms, pairwise_bernoulli_log_prob
from .models import VAE, Decoder


def flip_pixels(x: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Pixel-flip noise: each pixel independently becomes 1 - x with probability `prob`."""
    mask = torch.rand(x.shape, generator=generator, device=x.device) < prob
    return torch.where(mask, 1.0 - x, x)


def entropy_floor(x: torch.Tensor) -> float:
    """Mean over images of sum_j H(y_j): no Bernoulli model can score grayscale data below it."""
    return float((F.binary_cross_entropy(x, x, reduction="none")).sum(-1).mean())


@torch.no_grad()
def vae_elbo(vae: VAE, x: torch.Tensor, generator: torch.Generator, batch_size: int = 1000) -> dict[str, float]:
    """Test-set rec, kl and neg_elbo (nats per image) at one reparameterised draw per image."""
    vae.eval()
    rec_sum = kl_sum = 0.0
    for y in x.split(batch_size):
        noise = torch.randn(len(y), vae.decoder.z_dim, generator=generator, device=y.device)
        rec, kl = elbo_terms(y, *vae(y, noise))
        rec_sum, kl_sum = rec_sum + rec.sum().item(), kl_sum + kl.sum().item()
    rec, kl = rec_sum / len(x), kl_sum / len(x)
    return {"neg_elbo": rec + kl, "rec": rec, "kl": kl}


@torch.no_grad()
def prior_mc_nll(decoder: Decoder, x: torch.Tensor, draws: torch.Tensor, batch_size: int = 1000,
                 chunk: int = 4096) -> float:
    """Mean over images of -log (1/M) sum_m p(y | z_m) for the given prior draws (M x z_dim).

    Chunked over images and draws with a running logsumexp, so any M fits in memory.
    """
    decoder.eval()
    logits = [decoder(z) for z in draws.split(chunk)]
    total = 0.0
    for y in x.split(batch_size):
        lse = torch.stack([torch.logsumexp(pairwise_bernoulli_log_prob(y, lg), 1) for lg in logits]).logsumexp(0)
        total += (math.log(len(draws)) - lse).sum().item()
    return total / len(x)


@torch.no_grad()
def reconstruction_errors(logits: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """BCE (nats per image) and per-pixel MSE of reconstructions against the clean images."""
    return {"bce": float(-bernoulli_log_prob(clean, logits).mean()),
            "mse": float((torch.sigmoid(logits) - clean).pow(2).mean())}


@torch.no_grad()
def denoising(vae: VAE, direct: Decoder, clean: torch.Tensor, flip_probs: list[float], candidates: int,
              generator: torch.Generator) -> dict[str, dict[str, float]]:
    """Per flip probability: VAE encode-decode (posterior mean) and direct-fit prior search, vs clean."""
    results = {}
    for prob in flip_probs:
        noisy = flip_pixels(clean, prob, generator)
        vae_err = reconstruction_errors(vae_reconstruct(vae, noisy), clean)
        draws = torch.randn(candidates, direct.z_dim, generator=generator, device=clean.device)
        z = prior_search(direct, noisy, draws)
        direct_err = reconstruction_errors(direct(z), clean)
        results[flip_key(prob)] = {"flip_prob": prob, "vae_bce": vae_err["bce"], "direct_bce": direct_err["bce"],
                                   "vae_mse": vae_err["mse"], "direct_mse": direct_err["mse"]}
    return results


def flip_key(prob: float) -> str:
    """A metric key without dots, so `dvc exp show` columns stay unambiguous: 0.02 -> 'flip_0_02'."""
    return "flip_" + f"{prob:g}".replace(".", "_")


def tsne_embedding(points: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    perplexity = min(perplexity, (len(points) - 1) / 3)  # t-SNE needs perplexity < n_samples
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(points)
