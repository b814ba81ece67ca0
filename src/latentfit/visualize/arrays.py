"""The arrays one fit's figures show, computed in its evaluate stage (`evaluate@<fit>`) where the model
is loaded, so the final stage only draws: its reconstructions, prior samples, latent interpolation and
denoising of the same test images as every other fit, and its latent means mapped by t-SNE (or, with a
2-d latent, the latent space itself). The images the fits share (which test images are shown, their noisy
versions) come from streams without the fit's name, so every fit's file holds the same ones."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.manifold import TSNE

from latentfit.core.config import VisualizeParams
from latentfit.core.errors import DataError
from latentfit.core.runtime import stream
from latentfit.inference.reconstruct import encode, flip_pixels, reconstruct
from latentfit.model.files import FitModel
from latentfit.model.networks import VAE

PRIOR_SAMPLES = 36  # the notebook's 6 x 6 grid of prior samples


def pick_class(labels: torch.Tensor, digit: int, generator: torch.Generator) -> int:
    (where,) = (labels == digit).nonzero(as_tuple=True)
    if len(where) == 0:
        raise DataError(f"the test split has no image of class {digit}; choose another visualize.interp_from/to")
    return int(where[torch.randint(len(where), (1,), generator=generator, device=where.device)])


def tsne_embedding(points: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """A 2-d t-SNE map of latent means, for the picture only (no metric reads it)."""
    perplexity = min(perplexity, (len(points) - 1) / 3)  # t-SNE needs perplexity < n_samples
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(points)


def _probs(logits: torch.Tensor) -> np.ndarray:
    return torch.sigmoid(logits).cpu().numpy()


@torch.no_grad()
def fit_figure_data(fit: FitModel, encoder: VAE, train: dict, test: dict, p: VisualizeParams) -> dict[str, np.ndarray]:
    """Every array of the fit's figures, by name. `encoder` is the fit's own or its post-hoc one."""
    x, labels, device = test["x"], test["y"], test["x"].device

    def shared(block: str) -> torch.Generator:
        return stream(p.seed, "figures", block, device=device)

    def own(block: str) -> torch.Generator:
        return stream(p.seed, "figures", fit.name, block, device=device)

    out: dict[str, np.ndarray] = {"raw_image": train["x"][0].cpu().numpy(), "raw_label": train["y"][:1].cpu().numpy()}
    shown = torch.randperm(len(x), generator=shared("shown"), device=device)[: p.n_show]
    probs = torch.sigmoid(reconstruct(fit, x[shown], p.search_candidates, own("reconstruction"), sample=True))
    out |= {"shown": x[shown].cpu().numpy(), "shown_labels": labels[shown].cpu().numpy(),
            "reconstruction": probs.cpu().numpy(),
            "reconstruction_sample": torch.bernoulli(probs, generator=own("reconstruction_sample")).cpu().numpy()}
    z = torch.randn(PRIOR_SAMPLES, fit.decoder.z_dim, generator=shared("prior_samples"), device=device)
    out["prior_samples"] = _probs(fit.decoder(z))  # the same z for every fit

    g = shared("interpolation")
    ends = x[[pick_class(labels, p.interp_from, g), pick_class(labels, p.interp_to, g)]]
    mu, _ = encode(encoder, ends)
    t = torch.linspace(0, 1, p.interp_steps, device=device)[:, None]
    out["interpolation"] = _probs(fit.decoder((1 - t) * mu[0] + t * mu[1]))
    out["interpolation_pixel"] = ((1 - t) * ends[0] + t * ends[1]).cpu().numpy()

    noisy = flip_pixels(x[shown], p.flip_prob, shared("noise"))
    out["noisy"] = noisy.cpu().numpy()
    out["denoised"] = _probs(reconstruct(fit, noisy, p.search_candidates, shared("search"), sample=True))
    k = min(p.tsne_points, len(x))
    means = encode(encoder, x[:k])[0].cpu().numpy()
    out["latent_labels"] = labels[:k].cpu().numpy()
    if fit.decoder.z_dim != 2:
        out["tsne"] = tsne_embedding(means, p.tsne_perplexity, p.seed)
        return out
    ticks = torch.linspace(-p.manifold_span, p.manifold_span, p.manifold_steps, device=device)
    z2, z1 = torch.meshgrid(ticks.flip(0), ticks, indexing="ij")  # top row: largest z_2
    out["latent_means"] = means
    out["manifold"] = _probs(fit.decoder(torch.stack([z1.flatten(), z2.flatten()], dim=1)))
    return out
