"""Every figure of the final stage, registered once (FIGURES: name -> how to draw it), drawn from what the
fits' stages wrote (their figure arrays, curves and numbers): the reference notebook's figures with a row or
panel per fit, the training curves and the evaluation's curves. The final stage draws FIGURES, the tests
read it, and dvc.yaml's plots show every PNG it draws. A new figure is its drawing function and one line
here. Nothing here runs a model or computes a metric."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from latentfit.core.config import VisualizeParams
from latentfit.core.fits import label
from latentfit.evaluation.schema import Details, walk
from latentfit.visualize import drawing as figures


@dataclass(frozen=True)
class Inputs:
    """What a figure is drawn from: each fit's figure arrays and training history, the comparison's curves and
    numbers, the visualize params and the dataset's class names."""

    arrays: Mapping[str, Mapping[str, np.ndarray]]
    histories: Mapping[str, pd.DataFrame]
    curves: Mapping[str, pd.DataFrame]
    details: Details
    p: VisualizeParams
    classes: list[str]

    @property
    def fits(self) -> list[str]:
        return list(self.arrays)

    @property
    def first(self) -> Mapping[str, np.ndarray]:  # what every fit's file holds alike: shown, noisy, end images
        return self.arrays[self.fits[0]]

    def name(self, c: int) -> str:
        return self.classes[c] if c < len(self.classes) else str(c)

    def rows(self, key: str, n: int | None = None) -> list[tuple[str, np.ndarray]]:
        """One row of images per fit: its array `key` (the first n)."""
        return [(label(f), self.arrays[f][key][:n]) for f in self.fits]

    @property
    def span(self) -> str:
        return f"{self.name(self.p.interp_from)} -> {self.name(self.p.interp_to)}"

    @property
    def flat(self) -> bool:
        """A 2-d latent space, drawn directly (its means and its decoded grid) instead of by t-SNE."""
        return "tsne" not in self.first


Draw = Callable[[Inputs], Figure | None]  # None: the figure does not apply (no anatomy, a 2-d latent's t-SNE)


def _reconstruction(d: Inputs) -> Figure:
    rows = [("input", d.first["shown"])]
    for f in d.fits:
        rows += [(f"{label(f)}: mean", d.arrays[f]["reconstruction"]),
                 (f"{label(f)}: sample", d.arrays[f]["reconstruction_sample"])]
    shown = ", ".join(d.name(int(c)) for c in d.first["shown_labels"])
    return figures.image_rows(rows, ncols=d.p.n_show, title=f"Test images ({shown}) and reconstructions")


def _denoising(d: Inputs) -> Figure:
    flip = f"each pixel y flipped to 1 - y with probability {d.p.flip_prob:g}"
    return figures.image_rows([("original", d.first["shown"]), ("noisy", d.first["noisy"]), *d.rows("denoised")],
                              ncols=d.p.n_show, title=f"Denoising ({flip}): encoder for a fit with one, else the best "
                                                      f"of {d.p.search_candidates} prior draws")


def _tsne(d: Inputs) -> Figure | None:
    if d.flat:
        return None
    return figures.latent_scatter([(label(f), d.arrays[f]["tsne"], d.first["latent_labels"]) for f in d.fits],
                                  r"t-SNE of latent means $\mu_\phi(y)$ (a fit without an encoder: its post-hoc one)",
                                  "t-SNE", d.classes)


def _latent_means(d: Inputs) -> Figure | None:
    if not d.flat:
        return None
    return figures.latent_scatter([(label(f), d.arrays[f]["latent_means"], d.first["latent_labels"]) for f in d.fits],
                                  r"Latent means $\mu_\phi(y)$ of test images", "z", d.classes)


def _latent_manifold(d: Inputs) -> Figure | None:
    if not d.flat:
        return None
    return figures.latent_manifold([(f"{label(f)}'s decoder", d.arrays[f]["manifold"]) for f in d.fits],
                                   d.p.manifold_steps, d.p.manifold_span)


def _prior_mc_curve(d: Inputs) -> Figure:
    pairs = d.details.pairs
    iwae = f"IWAE (first {next(iter(pairs.values())).gap.iwae.images} images)" if pairs else "IWAE"
    return figures.prior_mc_curve(d.curves["prior_mc"], {f: s.test.iwae_nll for f, s in d.details.fits.items()}, iwae)


def _denoise_sweep(d: Inputs) -> Figure:
    methods = {f: "encoder" if s.own_encoder else "prior search" for f, s in d.details.fits.items()}
    return figures.denoise_sweep(d.curves["denoise"], list(d.details.fits), methods)


def _gap_walk(d: Inputs) -> Figure | None:
    stops = walk(d.details) if d.details.pairs else []
    if not stops:
        return None
    return figures.gap_walk(stops, d.details.pairs[d.details.challenger].verdict.ais.images, d.details.baseline)


def _rate_distortion(d: Inputs) -> Figure | None:
    fits = d.details.fits
    own = {f: (s.anatomy.encoder.rate, s.anatomy.encoder.distortion) for f, s in fits.items() if s.anatomy is not None}
    if not own:
        return None
    return figures.rate_distortion(d.curves["rate_distortion"], own, {f for f, s in fits.items() if not s.own_encoder})


FIGURES: dict[str, Draw] = {  # plots/figures/<name>.png
    "raw_image": lambda d: figures.raw_image(d.first["raw_image"], d.name(int(d.first["raw_label"][0]))),
    "reconstruction": _reconstruction,
    "prior_samples": lambda d: figures.image_rows(
        d.rows("prior_samples"), ncols=6,
        title=f"{len(d.first['prior_samples'])} samples from the prior, the same z for every fit"),
    "samples_same_z": lambda d: figures.image_rows(
        d.rows("prior_samples", d.p.n_show), ncols=d.p.n_show,
        title="Samples from the same prior draws z through each fitted decoder"),
    "interpolation": lambda d: figures.image_rows(
        d.rows("interpolation"), ncols=d.p.interp_steps, title=f"Linear interpolation in latent space, {d.span}"),
    "interpolation_latent_vs_pixel": lambda d: figures.image_rows(
        [*d.rows("interpolation"), ("pixel", d.first["interpolation_pixel"])], ncols=d.p.interp_steps,
        title=f"Latent-space vs naive pixel-space interpolation, {d.span}"),
    "denoising": _denoising,
    "tsne": _tsne,
    "latent_means": _latent_means,
    "latent_manifold": _latent_manifold,
    "training_curves": lambda d: figures.training_curves(dict(d.histories)),
    "prior_mc_curve": _prior_mc_curve,
    "denoise_sweep": _denoise_sweep,
    "estimator_convergence": lambda d: figures.estimator_convergence(d.curves["estimators"]),
    "gap_walk": _gap_walk,
    "rate_distortion": _rate_distortion,
}
FLAT_ONLY = {"latent_means", "latent_manifold"}  # drawn for a 2-d latent space only, instead of ...
NOT_FLAT = {"tsne"}  # ... the t-SNE map of any other


def expected(z_dim: int, anatomy: bool = True) -> set[str]:
    """The figures a run draws: every registered one that applies to its latent dimension (and anatomy)."""
    names = set(FIGURES) - (NOT_FLAT if z_dim == 2 else FLAT_ONLY)
    return names if anatomy else names - {"gap_walk", "rate_distortion"}


def draw(inputs: Inputs) -> dict[str, Figure]:
    """Every registered figure that applies, by name."""
    return {name: fig for name, make in FIGURES.items() if (fig := make(inputs)) is not None}
