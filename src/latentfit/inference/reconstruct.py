"""From images to latents and back: pixel-flip noise, encoding, reconstruction, and the direct fit's
search of prior draws (the evaluate and visualize stages' code; the training stages never run it)."""

from __future__ import annotations

import torch

from latentfit.model.files import FitModel
from latentfit.model.likelihood import pairwise_bernoulli_log_prob
from latentfit.model.networks import VAE, Decoder


def flip_pixels(x: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Pixel-flip noise: each pixel independently becomes 1 - x with probability `prob`."""
    mask = torch.rand(x.shape, generator=generator, device=x.device) < prob
    return torch.where(mask, 1.0 - x, x)


@torch.no_grad()
def encode(vae: VAE, y: torch.Tensor, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and log-variances of q_phi(z | y), batch by batch."""
    vae.eval()
    parts = [vae.encoder(chunk) for chunk in y.split(batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@torch.no_grad()
def vae_reconstruct(vae: VAE, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logits of p(y | z) at z ~ q(z | y) (one draw, as the notebook does); z = mu when generator is None."""
    mu, logvar = encode(vae, y)
    z = mu
    if generator is not None:
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator, device=mu.device)
    vae.decoder.eval()
    return vae.decoder(z)


@torch.no_grad()
def prior_search(decoder: Decoder, y: torch.Tensor, draws: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """For each image, the prior draw z (a row of `draws`) that maximises p(y | z).

    The draws are decoded `chunk` at a time and a running best kept, so memory grows with
    chunk x pixels and images x chunk, never with candidates x pixels.
    """
    decoder.eval()
    best_score = torch.full((len(y),), -torch.inf, device=y.device)
    best_index = torch.zeros(len(y), dtype=torch.long, device=y.device)
    for start in range(0, len(draws), chunk):
        score, arg = pairwise_bernoulli_log_prob(y, decoder(draws[start:start + chunk])).max(dim=1)
        better = score > best_score
        best_score = torch.where(better, score, best_score)
        best_index = torch.where(better, arg + start, best_index)
    return draws[best_index]


@torch.no_grad()
def reconstruct(fit: FitModel, y: torch.Tensor, candidates: int, generator: torch.Generator,
                sample: bool = False) -> torch.Tensor:
    """Logits of a fit's reconstruction of `y`: through its own encoder (the posterior mean, or one draw of q
    with `sample`, as the notebook shows it), or, for a fit without one, from the best of `candidates` prior
    draws taken from `generator` (the notebook's search)."""
    if fit.encoder is not None:
        return vae_reconstruct(fit.encoder, y, generator if sample else None)
    draws = torch.randn(candidates, fit.decoder.z_dim, generator=generator, device=y.device)
    return fit.decoder(prior_search(fit.decoder, y, draws))
