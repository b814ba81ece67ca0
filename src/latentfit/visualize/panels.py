"""Every figure of the final stage, drawn from what the fits' evaluate stages wrote (their figure arrays,
curves and numbers): the reference notebook's figures with a row or panel per fit, the training curves
and the evaluation's curves. Nothing here runs a model or computes a metric."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from latentfit.core.config import VisualizeParams
from latentfit.core.fits import label
from latentfit.evaluation.schema import Details, walk
from latentfit.visualize import drawing as figures


def _name(classes: list[str], c: int) -> str:
    return classes[c] if c < len(classes) else str(c)


def model_figures(arrays: Mapping[str, Mapping[str, np.ndarray]], p: VisualizeParams, classes: list[str]) -> dict[str, Figure]:
    """The notebook's figures, by name, a row (or panel) per fit. `p` holds the visualize params."""
    fits, n = list(arrays), p.n_show
    first = arrays[fits[0]]  # what every fit's file holds alike: the shown, noisy and end images
    shown = ", ".join(_name(classes, int(c)) for c in first["shown_labels"])
    span = f"{_name(classes, p.interp_from)} -> {_name(classes, p.interp_to)}"
    steps = p.interp_steps
    flip = f"each pixel y flipped to 1 - y with probability {p.flip_prob:g}"
    figs = {"raw_image": figures.raw_image(first["raw_image"], _name(classes, int(first["raw_label"][0])))}
    rows = [("input", first["shown"])]
    for f in fits:
        rows += [(f"{label(f)}: mean", arrays[f]["reconstruction"]), (f"{label(f)}: sample",
                                                                       arrays[f]["reconstruction_sample"])]
    figs["reconstruction"] = figures.image_rows(rows, ncols=n, title=f"Test images ({shown}) and reconstructions")
    figs["prior_samples"] = figures.image_rows([(label(f), arrays[f]["prior_samples"]) for f in fits], ncols=6,
                                               title=f"{len(first['prior_samples'])} samples from the prior, the same z for every fit")
    figs["samples_same_z"] = figures.image_rows([(label(f), arrays[f]["prior_samples"][:n]) for f in fits], ncols=n,
                                                title="Samples from the same prior draws z through each fitted decoder")
    latent = [(label(f), arrays[f]["interpolation"]) for f in fits]
    figs["interpolation"] = figures.image_rows(latent, ncols=steps, title=f"Linear interpolation in latent space, {span}")
    figs["interpolation_latent_vs_pixel"] = figures.image_rows(
        [*latent, ("pixel", first["interpolation_pixel"])], ncols=steps,
        title=f"Latent-space vs naive pixel-space interpolation, {span}")
    figs["denoising"] = figures.image_rows(
        [("original", first["shown"]), ("noisy", first["noisy"]),
         *[(label(f), arrays[f]["denoised"]) for f in fits]], ncols=n,
        title=f"Denoising ({flip}): encoder for a fit with one, else the best of "
              f"{p.search_candidates} prior draws")
    labels = first["latent_labels"]
    if "tsne" in first:
        figs["tsne"] = figures.latent_scatter([(label(f), arrays[f]["tsne"], labels) for f in fits],
                                              r"t-SNE of latent means $\mu_\phi(y)$ (a fit without an encoder: "
                                              "its post-hoc one)", "t-SNE", classes)
    else:
        figs["latent_means"] = figures.latent_scatter([(label(f), arrays[f]["latent_means"], labels) for f in fits],
                                                      r"Latent means $\mu_\phi(y)$ of test images", "z", classes)
        figs["latent_manifold"] = figures.latent_manifold(
            [(f"{label(f)}'s decoder", arrays[f]["manifold"]) for f in fits], p.manifold_steps,
            p.manifold_span)
    return figs


def curve_figures(histories: Mapping[str, pd.DataFrame], curves: Mapping[str, pd.DataFrame],
                  details: Details) -> dict[str, Figure]:
    """The training histories, the evaluation's curves, and the anatomy's (when the fits have one)."""
    fits = list(details.fits)
    figs = {"training_curves": figures.training_curves(dict(histories)),
            "prior_mc_curve": figures.prior_mc_curve(
                curves["prior_mc"], {f: s.test.iwae_nll for f, s in details.fits.items()},
                f"IWAE (first {next(iter(details.pairs.values())).gap.iwae.images} images)" if details.pairs else "IWAE"),
            "denoise_sweep": figures.denoise_sweep(
                curves["denoise"], fits, {f: "encoder" if s.own_encoder else "prior search"
                                          for f, s in details.fits.items()}),
            "estimator_convergence": figures.estimator_convergence(curves["estimators"])}
    stops = walk(details) if details.pairs else []
    if stops:
        figs["gap_walk"] = figures.gap_walk(stops, details.pairs[details.challenger].verdict.ais.images,
                                            details.baseline)
    own = {f: (s.anatomy.encoder.rate, s.anatomy.encoder.distortion) for f, s in details.fits.items()
           if s.anatomy is not None}
    if own:
        posthoc = {f for f, s in details.fits.items() if not s.own_encoder}
        figs["rate_distortion"] = figures.rate_distortion(curves["rate_distortion"], own, posthoc)
    return figs
