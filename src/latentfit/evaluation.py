"""The comparison metrics. Nothing here draws; every random draw comes from a passed generator."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from sklearn.neighbors import KNeighborsClassifier

from .inference import prior_search, vae_reconstruct
from .likelihood import bernoulli_log_prob, elbo_terms, log_importance_weights, pairwise_bernoulli_log_prob
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
def prior_mc_curve(decoder: Decoder, x: torch.Tensor, draws: torch.Tensor, sizes: list[int],
                   batch_size: int = 1000, chunk: int = 4096) -> dict[int, float]:
    """Mean over images of -log (1/M) sum_{m<=M} p(y | z_m), for each M in `sizes` (the first M draws).

    One pass over the draws with a running logsumexp per image, so any M fits in memory.
    """
    decoder.eval()
    sizes = sorted({min(m, len(draws)) for m in sizes})
    edges = sorted(set(range(0, len(draws), chunk)) | set(sizes) | {len(draws)})
    segments = [(end, decoder(draws[start:end])) for start, end in itertools.pairwise(edges)]
    totals = dict.fromkeys(sizes, 0.0)
    for y in x.split(batch_size):
        running = torch.full((len(y),), -torch.inf, device=y.device)
        for end, logits in segments:
            running = torch.logaddexp(running, torch.logsumexp(pairwise_bernoulli_log_prob(y, logits), 1))
            if end in totals:
                totals[end] += (math.log(end) - running).sum().item()
    return {m: total / len(x) for m, total in totals.items()}


def prior_mc_nll(decoder: Decoder, x: torch.Tensor, draws: torch.Tensor, batch_size: int = 1000,
                 chunk: int = 4096) -> float:
    """Mean over images of -log (1/M) sum_m p(y | z_m) for the given M prior draws (M x z_dim)."""
    return prior_mc_curve(decoder, x, draws, [len(draws)], batch_size, chunk)[len(draws)]


@torch.no_grad()
def iwae_log_prob(model: VAE, y: torch.Tensor, k: int, generator: torch.Generator,
                  rows: int = 16384) -> torch.Tensor:
    """The IWAE estimate log (1/k) sum_i p(y, z_i) / q(z_i | y), z_i ~ q(z | y), for each image.

    A stochastic lower bound on log p(y) that rises with k and reaches it as k grows. Draws are
    decoded about `rows` at a time with a running logsumexp, so memory does not grow with k.
    """
    model.eval()
    mu, logvar = model.encoder(y)
    std, per_chunk = torch.exp(0.5 * logvar), max(1, rows // len(y))
    running = torch.full((len(y),), -torch.inf, device=y.device)
    for start in range(0, k, per_chunk):
        eps = torch.randn(min(per_chunk, k - start), *mu.shape, generator=generator, device=y.device)
        z = mu + std * eps
        log_w = log_importance_weights(y, model.decoder(z), z, mu, logvar)
        running = torch.logaddexp(running, torch.logsumexp(log_w, 0))
    return running - math.log(k)


def iwae_nll(model: VAE, x: torch.Tensor, k: int, generator: torch.Generator,
             batch_size: int = 32) -> tuple[float, float]:
    """Mean IWAE negative log-likelihood over images, and its standard error across images."""
    nll = -torch.cat([iwae_log_prob(model, y, k, generator) for y in x.split(batch_size)])
    return nll.mean().item(), (nll.std() / math.sqrt(len(nll))).item() if len(nll) > 1 else 0.0


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


def knn_accuracy(train_z: np.ndarray, train_labels: np.ndarray, test_z: np.ndarray, test_labels: np.ndarray,
                 neighbours: int = 5) -> float:
    """Accuracy of a k-nearest-neighbour classifier of latent means, fit on train, scored on test."""
    return float(KNeighborsClassifier(n_neighbors=neighbours).fit(train_z, train_labels).score(test_z, test_labels))


def silhouette(z: np.ndarray, labels: np.ndarray, points: int, seed: int) -> float:
    """Silhouette score of the label clusters in latent space (-1 .. 1, higher is better separated)."""
    return float(silhouette_score(z, labels, sample_size=min(points, len(z)), random_state=seed))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between Gaussians fitted to two feature sets."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    root = root.real if np.iscomplexobj(root) else root  # numerical noise can leave tiny imaginary parts
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@torch.no_grad()
def accuracy(classifier: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    classifier.eval()
    return (classifier(x).argmax(1) == labels).float().mean().item()
