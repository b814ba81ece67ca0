"""What each figure of the visualize stage shows, computed from the models and the data: every figure
of the reference notebook, the training curves and the evaluation's curves. Arrays go to figures.py,
which draws them; nothing here is written to disk."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from . import figures
from .errors import DataError
from .evaluation.schema import Details
from .evaluation.why import walk
from .inference import encode, flip_pixels, prior_search, vae_reconstruct
from .models import VAE, Decoder


def pick_digit(labels: torch.Tensor, digit: int, generator: torch.Generator) -> int:
    (where,) = (labels == digit).nonzero(as_tuple=True)
    if len(where) == 0:
        raise DataError(f"the test split has no image of digit {digit}; choose another visualize.interp_from/to")
    return int(where[torch.randint(len(where), (1,), generator=generator, device=where.device)])


def tsne_embedding(points: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """A 2-d t-SNE map of latent means, for the picture only (no metric reads it)."""
    perplexity = min(perplexity, (len(points) - 1) / 3)  # t-SNE needs perplexity < n_samples
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(points)


def _decode(decoder: Decoder, z: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(decoder(z))


@torch.no_grad()
def model_figures(vae: VAE, direct: Decoder, train: dict, test: dict, p: Any, g: torch.Generator) -> dict[str, Figure]:
    """The notebook's figures, by name. `p` holds the visualize params (config.VisualizeParams)."""
    x, labels = test["x"], test["y"]
    n, z_dim, figs = p.n_show, vae.decoder.z_dim, {}
    device = x.device

    figs["raw_image"] = figures.raw_image(train["x"][0], int(train["y"][0]))

    idx = torch.randperm(len(x), generator=g, device=device)[:n]
    probs = torch.sigmoid(vae_reconstruct(vae, x[idx], g))
    figs["reconstruction"] = figures.image_rows(
        [("input", x[idx]), ("reconstruction", probs), ("Bernoulli sample", torch.bernoulli(probs, generator=g))],
        ncols=n, title="Test images (labels " + " ".join(str(int(v)) for v in labels[idx]) + ")")

    samples = _decode(vae.decoder, torch.randn(36, z_dim, generator=g, device=device))
    figs["prior_samples"] = figures.image_rows([("", samples)], ncols=6, title="New samples from the VAE prior")

    ends = x[[pick_digit(labels, p.interp_from, g), pick_digit(labels, p.interp_to, g)]]
    mu, _ = encode(vae, ends)
    t = torch.linspace(0, 1, p.interp_steps, device=device)[:, None]
    latent, pixel = _decode(vae.decoder, (1 - t) * mu[0] + t * mu[1]), (1 - t) * ends[0] + t * ends[1]
    span = f"{p.interp_from} -> {p.interp_to}"
    figs["interpolation"] = figures.image_rows([("latent", latent)], ncols=p.interp_steps,
                                               title=f"Linear interpolation in latent space, {span}")
    figs["interpolation_latent_vs_pixel"] = figures.image_rows(
        [("latent", latent), ("pixel", pixel)], ncols=p.interp_steps,
        title=f"Latent-space vs naive pixel-space interpolation, {span}")

    clean = x[torch.randperm(len(x), generator=g, device=device)[:n]]
    noisy = flip_pixels((clean > 0.5).float(), p.flip_prob, g)  # binarised first, as the notebook does
    figs["vae_denoising"] = figures.image_rows(
        [("original", clean), ("noisy", noisy), ("VAE denoised", torch.sigmoid(vae_reconstruct(vae, noisy, g)))],
        ncols=n, title=f"Denoising with the VAE, flip probability {p.flip_prob}")

    figs.update(latent_figures(vae, direct, x, labels, p))

    z = torch.randn(n, z_dim, generator=g, device=device)
    figs["samples_vae_vs_direct"] = figures.image_rows(
        [("VAE", _decode(vae.decoder, z)), ("direct fit", _decode(direct, z))], ncols=n,
        title="Samples from the same prior draws z through both fitted decoders")

    noisy = flip_pixels(x[:n], p.flip_prob, g)
    best_z = prior_search(direct, noisy, torch.randn(p.search_candidates, z_dim, generator=g, device=device))
    figs["search_reconstruction"] = figures.image_rows(
        [("original", x[:n]), (f"noisy, f={p.flip_prob}", noisy),
         ("VAE", torch.sigmoid(vae_reconstruct(vae, noisy, g))),
         (f"direct search\n({p.search_candidates} draws)", _decode(direct, best_z))],
        ncols=n, title="Reconstruction of noisy inputs: VAE encoder vs direct-fit prior search")
    return figs


def latent_figures(vae: VAE, direct: Decoder, x: torch.Tensor, labels: torch.Tensor, p: Any) -> dict[str, Figure]:
    """t-SNE of the VAE's latent means; with a 2-d latent, the latent space itself and both decoders over it."""
    k = min(p.tsne_points, len(x))
    mu, shown = encode(vae, x[:k])[0].cpu().numpy(), labels[:k].cpu().numpy()
    if vae.decoder.z_dim != 2:
        embedding = tsne_embedding(mu, p.tsne_perplexity, p.seed)
        return {"tsne_vae": figures.latent_scatter(embedding, shown, r"t-SNE of VAE latent means $\mu_\phi(y)$",
                                                   "t-SNE")}
    ticks = torch.linspace(-p.manifold_span, p.manifold_span, p.manifold_steps, device=x.device)
    z2, z1 = torch.meshgrid(ticks.flip(0), ticks, indexing="ij")  # top row: largest z_2
    grid = torch.stack([z1.flatten(), z2.flatten()], dim=1)
    return {"latent_means": figures.latent_scatter(mu, shown, r"VAE latent means $\mu_\phi(y)$ of test images", "z"),
            "latent_manifold": figures.latent_manifold(
                [("VAE decoder", _decode(vae.decoder, grid)), ("direct-fit decoder", _decode(direct, grid))],
                p.manifold_steps, p.manifold_span)}


def curve_figures(histories: dict[str, pd.DataFrame], curves: dict[str, pd.DataFrame],
                  evaluated: Details) -> dict[str, Figure]:
    """The training histories and the evaluate stage's curves (and its anatomy's, when it has one)."""
    anatomy = {}
    if evaluated.anatomy is not None:
        own = {f: (getattr(evaluated.anatomy, f).encoder.rate, getattr(evaluated.anatomy, f).encoder.distortion)
               for f in ("vae", "direct")}
        anatomy = {"gap_walk": figures.gap_walk(walk(evaluated), evaluated.verdict.ais.images),
                   "rate_distortion": figures.rate_distortion(curves["rate_distortion"], own)}
    return anatomy | {"training_curves": figures.training_curves(histories["vae"], histories["direct"]),
            "prior_mc_curve": figures.prior_mc_curve(
                curves["prior_mc"], {"vae": evaluated.vae.test.iwae_nll, "direct": evaluated.direct.test.iwae_nll},
                f"IWAE (first {evaluated.gap.iwae.images} images)"),
            "denoise_sweep": figures.denoise_sweep(curves["denoise"]),
            "estimator_convergence": figures.estimator_convergence(curves["estimators"])}
