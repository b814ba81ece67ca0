"""One function per figure: arrays in, matplotlib Figure out. Nothing here computes a metric."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: stages write PNGs, they never open windows

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter
from torchvision.utils import make_grid

from latentfit.core.fits import label as fit_label

SIDE = 28


def _as_images(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x.detach().float().cpu().reshape(-1, 1, SIDE, SIDE)


def image_rows(rows: Sequence[tuple[str, torch.Tensor | np.ndarray]], ncols: int, title: str | None = None,
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


def raw_image(image: torch.Tensor | np.ndarray, label: str) -> Figure:
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(_as_images(image)[0, 0].numpy(), cmap="gray")
    ax.set_title(f"Raw image, label: {label}")
    ax.axis("off")
    return fig


def latent_scatter(panels: list[tuple[str, np.ndarray, np.ndarray]], title: str, axis_label: str,
                   class_names: list[str]) -> Figure:
    """One scatter of 2-d points per (title, points, labels) panel, coloured by class."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 1, 5), squeeze=False)
    for ax, (name, points, labels) in zip(axes[0], panels, strict=True):
        sc = ax.scatter(points[:, 0], points[:, 1], c=labels, s=6, cmap="tab10", alpha=0.75, vmin=-0.5, vmax=9.5)
        ax.set_xlabel(f"{axis_label} 1")
        ax.set_ylabel(f"{axis_label} 2")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    bar = fig.colorbar(sc, ax=list(axes[0]), ticks=range(10))
    bar.ax.set_yticklabels(class_names if len(class_names) == 10 else [str(c) for c in range(10)])
    fig.suptitle(title)
    return fig


def latent_manifold(panels: Sequence[tuple[str, torch.Tensor | np.ndarray]], steps: int, span: float) -> Figure:
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


def training_curves(histories: dict[str, pd.DataFrame]) -> Figure:
    """Each fit's training objective per epoch, a panel per fit (a VAE's -ELBO with its two terms), on one
    y-axis from 0, so the panels compare at a glance (each objective bounds a different quantity)."""
    fig, axes = plt.subplots(1, len(histories), figsize=(5.5 * len(histories), 4), squeeze=False, sharey=True)
    styles = {"neg_elbo": ("-", "-ELBO"), "rec": ("--", "reconstruction -E[log p(y|z)]"), "kl": (":", "KL(q || p)"),
              "neg_iwae": ("-.", "-IWAE bound"), "nll": ("-", "MC estimate of -log p(y)")}
    for ax, (name, history) in zip(axes[0], histories.items(), strict=True):
        for column in [c for c in styles if c in history]:
            ax.plot(history["epoch"], history[column], styles[column][0], label=styles[column][1])
        ax.set_title(f"{fit_label(name)}: training objective")
        ax.set_xlabel("epoch")
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("nats per training image")
    fig.tight_layout()
    return fig


def prior_mc_curve(curve: pd.DataFrame, iwae: dict[str, float], iwae_label: str = "IWAE") -> Figure:
    """The prior-sampling NLL estimate against the number of draws M, beside each fit's IWAE NLL."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, name in enumerate(iwae):
        ax.plot(curve["samples"], curve[name], "o-", color=f"C{i}", label=f"{fit_label(name)}: prior sampling")
        ax.axhline(iwae[name], color=f"C{i}", ls="--", label=f"{fit_label(name)}: {iwae_label}")
    ax.set_xscale("log")
    ax.set_xlabel("prior draws M")
    ax.set_ylabel("test NLL (nats/image; axis not from 0)")
    ax.set_title("Prior sampling converges slowly to the likelihood")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def denoise_sweep(table: pd.DataFrame, fits: list[str], methods: dict[str, str]) -> Figure:
    """Reconstruction error against the pixel-flip probability, a line per fit (`methods`: how each fit
    reconstructs)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, error, unit in zip(axes, ("bce", "mse"), ("nats/image", "per pixel"), strict=False):
        for i, name in enumerate(fits):
            ax.plot(table["flip_prob"], table[f"{name}_{error}"], "o-", color=f"C{i}",
                    label=f"{fit_label(name)} ({methods[name]})")
        ax.set_xlabel("flip probability (each pixel y becomes 1 - y)")
        ax.set_ylabel(f"{error.upper()} against the clean image ({unit}; axis not from 0)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Denoising: reconstruction of pixel-flipped test images")
    fig.tight_layout()
    return fig


def estimator_convergence(table: pd.DataFrame) -> Figure:
    """Each estimator's NLL against its cost, one panel per fit, on the same test images."""
    styles = {"prior": ("prior sampling (cost: M draws)", "o-"), "iwae": ("IWAE (cost: k samples)", "s-"),
              "ais": ("AIS (cost: chains x distributions x leapfrog)", "^-")}
    fits = list(dict.fromkeys(table["fit"]))
    fig, axes = plt.subplots(1, len(fits), figsize=(6 * len(fits), 4.2), squeeze=False)
    for ax, fit in zip(axes[0], fits, strict=False):
        for i, (estimator, (label, style)) in enumerate(styles.items()):
            rows = table[(table["fit"] == fit) & (table["estimator"] == estimator)].sort_values("cost")
            ax.plot(rows["cost"], rows["nll"], style, color=f"C{i}", label=label)
        best = table[table["fit"] == fit]["nll"].min()
        ax.set_ylim(best - 1, best + 12)  # the converged end matters; early points may be far above
        ax.set_xscale("log")
        ax.set_xlabel("decoder evaluations per image")
        ax.set_ylabel("test NLL (nats/image): zoomed on the best,\nearlier points are above the top")
        ax.set_title(f"{fit_label(fit)}'s decoder")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle("Held-out NLL estimates against their cost (lower is tighter; all are upper bounds in expectation)")
    fig.tight_layout()
    return fig


def gap_walk(stops: list[tuple[str, float]], images: int, baseline: str = "vae") -> Figure:
    """Each stop's NLL as a bar, top to bottom, with the step from the one above written beside it."""
    labels, values = [label for label, _ in stops], np.array([value for _, value in stops])
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(stops) + 1.6))
    rows = np.arange(len(stops))[::-1]
    base = values.min() - 0.15 * (values.max() - values.min()) - 1
    colors = ["C0" if label.startswith(fit_label(baseline)) else "C3" for label in labels]
    ax.barh(rows, values - base, left=base, color=colors, alpha=0.8)
    for i, (row, value) in enumerate(zip(rows, values, strict=True)):
        step = "" if i == 0 else f"   ({value - values[i - 1]:+.2f})"
        ax.text(value, row, f" {value:.2f}{step}", va="center", fontsize=9)
    ax.set_yticks(rows, labels)
    ax.set_xlim(base, values.max() + 0.35 * (values.max() - base))
    ax.set_xlabel(f"nats per image, the first {images} test images (lower is better); bars start at {base:.0f}, not 0")
    ax.set_title("From one fit's training objective to the other's likelihood, and up to its bound")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def rate_distortion(curve: pd.DataFrame, encoder: dict[str, tuple[float, float]],
                    posthoc: set[str] | frozenset[str] = frozenset()) -> Figure:
    """The exact posterior's distortion against its rate along the AIS path (beta from 0 to 1), per decoder,
    with the encoder's (KL, reconstruction) point: its own, or for a fit in `posthoc` the post-hoc one."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, fit in enumerate(encoder):
        rows = curve[curve["fit"] == fit].sort_values("beta")
        if rows.empty:
            continue
        name = fit_label(fit)
        ax.plot(rows["rate"], rows["distortion"], "-", color=f"C{i}", label=f"{name}: p(z|y) tempered, beta <= 1")
        last = rows.iloc[-1]
        ax.plot(last["rate"], last["distortion"], "o", color=f"C{i}", label=f"{name}: exact posterior (beta = 1)")
        whose = "its post-hoc encoder's q" if fit in posthoc else "its encoder's q"
        ax.plot(*encoder[fit], "x", color=f"C{i}", markersize=9, label=f"{name}: {whose}")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())  # 200, 300 ... rather than 2 x 10^2
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("rate KL(pi_beta || p(z)) (nats)")
    ax.set_ylabel("distortion E[-log p(y | z)] (nats)")
    ax.set_title("Rate and distortion of each decoder's posterior")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
