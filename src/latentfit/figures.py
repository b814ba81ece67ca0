"""One function per figure: arrays in, matplotlib Figure out. Nothing here computes a metric."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: stages write PNGs, they never open windows

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

SIDE = 28


def _as_images(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().cpu().reshape(-1, 1, SIDE, SIDE)


def image_rows(rows: list[tuple[str, torch.Tensor]], ncols: int, title: str | None = None,
               cell: float = 1.1) -> Figure:
    """The one image-grid helper: each (label, images) pair is a labelled row (or block) of images."""
    heights = [max(1, -(-len(images) // ncols)) for _, images in rows]
    fig, axes = plt.subplots(len(rows), 1, figsize=(cell * ncols + 1.2, cell * sum(heights) + 0.5),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows, strict=False):
        grid = make_grid(_as_images(images), nrow=ncols, padding=2, pad_value=1.0)[0]
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
        for side in ax.spines.values():
            side.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def raw_image(image: torch.Tensor, label: int) -> Figure:
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(_as_images(image)[0, 0].numpy(), cmap="gray")
    ax.set_title(f"Raw image, label = {label}")
    ax.axis("off")
    return fig


def latent_scatter(points: np.ndarray, labels: np.ndarray, title: str, axis_label: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(points[:, 0], points[:, 1], c=labels, s=6, cmap="tab10", alpha=0.75, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, label="label", ticks=range(10))
    ax.set_xlabel(f"{axis_label} 1")
    ax.set_ylabel(f"{axis_label} 2")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig


def latent_manifold(panels: list[tuple[str, torch.Tensor]], steps: int, span: float) -> Figure:
    """Decoders over a 2-D latent grid, one panel each. Each tensor holds steps x steps images in
    row-major order from the top left: z_2 falls from +span down the rows, z_1 rises along them."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 6.3), squeeze=False)
    for ax, (title, images) in zip(axes[0], panels, strict=False):
        grid = make_grid(_as_images(images), nrow=steps, padding=0)[0]
        half = span * steps / (steps - 1)  # images are centred on their grid points
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, extent=(-half, half, -half, half))
        ax.set_xlabel("$z_1$")
        ax.set_ylabel("$z_2$")
        ax.set_title(title)
    fig.suptitle("Decoded means over a grid of the 2-D latent space")
    fig.tight_layout()
    return fig


def training_curves(vae: pd.DataFrame, direct: pd.DataFrame) -> Figure:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for column, style in (("neg_elbo", "-"), ("rec", "--"), ("kl", ":")):
        left.plot(vae["epoch"], vae[column], style, label=column)
    left.set_title("VAE: training -ELBO = rec + KL (nats/image)")
    right.plot(direct["epoch"], direct["nll"], color="C3", label="MC marginal NLL")
    right.set_title("Direct fit: training MC NLL (nats/image)")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def prior_mc_curve(curve: pd.DataFrame, iwae: dict[str, float], iwae_label: str = "IWAE") -> Figure:
    """The prior-sampling NLL estimate against the number of draws M, beside each fit's IWAE NLL."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, name in enumerate(("vae", "direct")):
        ax.plot(curve["samples"], curve[name], "o-", color=f"C{i}", label=f"{name}: prior sampling")
        ax.axhline(iwae[name], color=f"C{i}", ls="--", label=f"{name}: {iwae_label}")
    ax.set_xscale("log")
    ax.set_xlabel("prior draws M")
    ax.set_ylabel("test NLL (nats/image)")
    ax.set_title("Prior sampling converges slowly to the likelihood")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def denoise_sweep(table: pd.DataFrame) -> Figure:
    """Reconstruction error against the pixel-flip probability, VAE encoder vs direct prior search."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, error, unit in zip(axes, ("bce", "mse"), ("nats/image", "per pixel"), strict=False):
        for i, name in enumerate(("vae", "direct")):
            ax.plot(table["flip_prob"], table[f"{name}_{error}"], "o-", color=f"C{i}", label=name)
        ax.set_xlabel("flip probability")
        ax.set_ylabel(f"{error.upper()} against the clean image ({unit})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Denoising: VAE encode-decode vs direct-fit prior search")
    fig.tight_layout()
    return fig


def estimator_convergence(table: pd.DataFrame) -> Figure:
    """Each estimator's NLL against its cost, one panel per fit, on the same test images."""
    styles = {"prior": ("prior sampling (cost: M draws)", "o-"), "iwae": ("IWAE (cost: k samples)", "s-"),
              "ais": ("AIS (cost: chains x distributions x leapfrog)", "^-")}
    fits = [f for f in ("vae", "direct") if f in set(table["fit"])]
    fig, axes = plt.subplots(1, len(fits), figsize=(6 * len(fits), 4.2), squeeze=False)
    for ax, fit in zip(axes[0], fits, strict=False):
        for i, (estimator, (label, style)) in enumerate(styles.items()):
            rows = table[(table["fit"] == fit) & (table["estimator"] == estimator)].sort_values("cost")
            ax.plot(rows["cost"], rows["nll"], style, color=f"C{i}", label=label)
        best = table[table["fit"] == fit]["nll"].min()
        ax.set_ylim(best - 1, best + 12)  # the converged end matters; early points may be far above
        ax.set_xscale("log")
        ax.set_xlabel("decoder evaluations per image")
        ax.set_ylabel("test NLL (nats/image)")
        ax.set_title(f"{'VAE' if fit == 'vae' else 'direct-fit'} decoder")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle("Held-out NLL estimates against their cost (lower is tighter; all are upper bounds in expectation)")
    fig.tight_layout()
    return fig


def gap_walk(stops: list[tuple[str, float]], images: int) -> Figure:
    """Each stop's NLL as a bar, top to bottom, with the step from the one above written beside it."""
    labels, values = [label for label, _ in stops], np.array([value for _, value in stops])
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(stops) + 1.6))
    rows = np.arange(len(stops))[::-1]
    base = values.min() - 0.15 * (values.max() - values.min()) - 1
    colors = ["C0" if label.startswith("VAE") else "C3" for label in labels]
    ax.barh(rows, values - base, left=base, color=colors, alpha=0.8)
    for i, (row, value) in enumerate(zip(rows, values, strict=True)):
        step = "" if i == 0 else f"   ({value - values[i - 1]:+.2f})"
        ax.text(value, row, f" {value:.2f}{step}", va="center", fontsize=9)
    ax.set_yticks(rows, labels)
    ax.set_xlim(base, values.max() + 0.35 * (values.max() - base))
    ax.set_xlabel(f"nats per image, the first {images} test images (lower is better)")
    ax.set_title("From the direct fit's training objective to the VAE's likelihood, and up to the VAE's bound")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def rate_distortion(curve: pd.DataFrame, encoder: dict[str, tuple[float, float]]) -> Figure:
    """The exact posterior's distortion against its rate along the AIS path (beta from 0 to 1), per decoder,
    with the encoder's own (KL, reconstruction) point."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, fit in enumerate(("vae", "direct")):
        rows = curve[curve["fit"] == fit].sort_values("beta")
        if rows.empty:
            continue
        name = "VAE" if fit == "vae" else "direct fit"
        ax.plot(rows["rate"], rows["distortion"], "-", color=f"C{i}", label=f"{name}: p(z|y) tempered, beta <= 1")
        last = rows.iloc[-1]
        ax.plot(last["rate"], last["distortion"], "o", color=f"C{i}", label=f"{name}: exact posterior (beta = 1)")
        ax.plot(*encoder[fit], "x", color=f"C{i}", markersize=9, label=f"{name}: its encoder's q")
    ax.set_yscale("log")
    ax.set_xlabel("rate KL(pi_beta || p(z)) (nats)")
    ax.set_ylabel("distortion E[-log p(y | z)] (nats)")
    ax.set_title("Rate and distortion of each decoder's posterior")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
