"""Stage 6: every figure of the notebook, plus the training curves and the evaluation's curves, as PNGs
under plots/figures/. With model.z_dim = 2 the latent space is drawn directly: a scatter of latent
means and both decoders over a grid of z, in place of the t-SNE."""

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from latentfit import figures
from latentfit.config import load_params, to_flat_dict
from latentfit.data import DataError, load_split
from latentfit.evaluation import flip_pixels, tsne_embedding
from latentfit.inference import encode, load_model, prior_search, vae_reconstruct
from latentfit.io import save_figure
from latentfit.runtime import pick_device, seeded_generator, stage_main
from latentfit.tracking import stage_run

TRAIN, TEST = "data/prepared/train.pt", "data/prepared/test.pt"
VAE_MODEL, DIRECT_MODEL = "models/vae.pt", "models/direct.pt"
VAE_HISTORY, DIRECT_HISTORY, FIGURES = "plots/train_vae.csv", "plots/train_direct.csv", Path("plots/figures")
PRIOR_CURVE, DENOISE, METRICS = "plots/prior_mc.csv", "plots/denoise.csv", "metrics/evaluate.json"


def pick_digit(labels: torch.Tensor, digit: int, generator: torch.Generator) -> int:
    (where,) = (labels == digit).nonzero(as_tuple=True)
    if len(where) == 0:
        raise DataError(f"the test split has no image of digit {digit}; choose another visualize.interp_from/to")
    return int(where[torch.randint(len(where), (1,), generator=generator, device=where.device)])


@torch.no_grad()
def draw_figures(params, device: torch.device) -> dict:
    """Every figure, by name; nothing is written here."""
    p = params.visualize
    g = seeded_generator(p.seed, device)
    train, test = load_split(TRAIN), load_split(TEST)
    x, labels = test["x"].to(device), test["y"].to(device)
    vae, _ = load_model(VAE_MODEL, device)
    direct, _ = load_model(DIRECT_MODEL, device)
    decode = lambda model, z: torch.sigmoid(model(z))
    n, z_dim, figs = p.n_show, vae.decoder.z_dim, {}

    figs["raw_image"] = figures.raw_image(train["x"][0], int(train["y"][0]))

    idx = torch.randperm(len(x), generator=g, device=device)[:n]
    probs = torch.sigmoid(vae_reconstruct(vae, x[idx], g))
    figs["reconstruction"] = figures.image_rows(
        [("input", x[idx]), ("reconstruction", probs), ("Bernoulli sample", torch.bernoulli(probs, generator=g))],
        ncols=n, title="Test images (labels " + " ".join(str(int(v)) for v in labels[idx]) + ")")

    samples = decode(vae.decoder, torch.randn(36, z_dim, generator=g, device=device))
    figs["prior_samples"] = figures.image_rows([("", samples)], ncols=6, title="New samples from the VAE prior")

    ends = x[[pick_digit(labels, p.interp_from, g), pick_digit(labels, p.interp_to, g)]]
    mu, _ = encode(vae, ends)
    t = torch.linspace(0, 1, p.interp_steps, device=device)[:, None]
    latent, pixel = decode(vae.decoder, (1 - t) * mu[0] + t * mu[1]), (1 - t) * ends[0] + t * ends[1]
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

    k = min(p.tsne_points, len(x))
    mu, shown_labels = encode(vae, x[:k])[0].cpu().numpy(), labels[:k].cpu().numpy()
    if z_dim == 2:  # the latent space is the picture: no t-SNE, and the decoders over a grid of it
        figs["latent_means"] = figures.latent_scatter(mu, shown_labels,
                                                      r"VAE latent means $\mu_\phi(y)$ of test images", "z")
        ticks = torch.linspace(-p.manifold_span, p.manifold_span, p.manifold_steps, device=device)
        z2, z1 = torch.meshgrid(ticks.flip(0), ticks, indexing="ij")  # top row: largest z_2
        grid = torch.stack([z1.flatten(), z2.flatten()], dim=1)
        figs["latent_manifold"] = figures.latent_manifold(
            [("VAE decoder", decode(vae.decoder, grid)), ("direct-fit decoder", decode(direct, grid))],
            p.manifold_steps, p.manifold_span)
    else:
        embedding = tsne_embedding(mu, p.tsne_perplexity, p.seed)
        figs["tsne_vae"] = figures.latent_scatter(embedding, shown_labels,
                                                  r"t-SNE of VAE latent means $\mu_\phi(y)$", "t-SNE")

    z = torch.randn(n, z_dim, generator=g, device=device)
    figs["samples_vae_vs_direct"] = figures.image_rows(
        [("VAE", decode(vae.decoder, z)), ("direct fit", decode(direct, z))], ncols=n,
        title="Samples from the same prior draws z through both fitted decoders")

    noisy = flip_pixels(x[:n], p.flip_prob, g)
    best_z = prior_search(direct, noisy, torch.randn(p.search_candidates, z_dim, generator=g, device=device))
    figs["search_reconstruction"] = figures.image_rows(
        [("original", x[:n]), (f"noisy, f={p.flip_prob}", noisy),
         ("VAE", torch.sigmoid(vae_reconstruct(vae, noisy, g))),
         (f"direct search\n({p.search_candidates} draws)", decode(direct, best_z))],
        ncols=n, title="Reconstruction of noisy inputs: VAE encoder vs direct-fit prior search")

    figs["training_curves"] = figures.training_curves(pd.read_csv(VAE_HISTORY), pd.read_csv(DIRECT_HISTORY))
    evaluated = json.loads(Path(METRICS).read_text())
    figs["prior_mc_curve"] = figures.prior_mc_curve(
        pd.read_csv(PRIOR_CURVE), {name: evaluated[name]["test"]["iwae_nll"] for name in ("vae", "direct")})
    figs["denoise_sweep"] = figures.denoise_sweep(pd.read_csv(DENOISE))

    return figs


@stage_main("visualize")
def main() -> None:
    params = load_params()
    device = pick_device(params.device)
    # Opened before any drawing: with tracking.required an unreachable store fails before the work.
    with stage_run("visualize", to_flat_dict(params), params.tracking.experiment, params.tracking.required) as run:
        figs = draw_figures(params, device)
        for name, fig in figs.items():
            save_figure(FIGURES / f"{name}.png", fig)
            plt.close(fig)
            run.log_artifact(FIGURES / f"{name}.png", "figures")
    print(f"wrote {len(figs)} figures to {FIGURES}/")


if __name__ == "__main__":
    main()
