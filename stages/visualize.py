"""The final stage: compares params.yaml's fits from what each `evaluate@<fit>` stage wrote (paired gaps and
their intervals, the verdict, metrics/report.md, the `dvc exp show` headline, the registry's alias) and
draws every figure (visualize/panels.FIGURES): the notebook's, the training curves and the evaluation's
curves, from each fit's figure_data@<fit> arrays. Runs no model."""

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

from latentfit.core.config import load_params, to_flat_dict
from latentfit.core.errors import DataError
from latentfit.core.io import save_figure, write_json, write_table, write_text
from latentfit.core.runtime import stage_main
from latentfit.core.tracking import stage_run
from latentfit.evaluation.compare import compare, denoise_table, long_form, prior_curve
from latentfit.evaluation.schema import FitScores, Reference
from latentfit.model.registry import link_and_rank
from latentfit.visualize.panels import Inputs, draw
from latentfit.visualize.report import class_names, render_report

# the params it reads: its `params` in dvc.yaml (`python -m latentfit.dag` checks), and all it may read
READS = ("data.dataset", "fits", "evaluate.ais_chains", "evaluate.ais_steps", "evaluate.ais_images",
         "evaluate.iwae_images", "evaluate.iwae_samples", "evaluate.prior_mc_samples", "evaluate.knn_neighbours",
         "evaluate.search_candidates", "visualize.n_show", "visualize.flip_prob", "visualize.search_candidates",
         "visualize.interp_from", "visualize.interp_to", "visualize.interp_steps", "visualize.manifold_steps",
         "visualize.manifold_span")

REFERENCE = "metrics/reference.json"
HEADLINE, DETAILS, REPORT = "metrics/comparison.json", "metrics/comparison_details.json", "metrics/report.md"
CURVES = {"training": "plots/training.csv", "prior_mc": "plots/prior_mc.csv", "denoise": "plots/denoise.csv",
          "estimators": "plots/estimators.csv", "rate_distortion": "plots/rate_distortion.csv"}
FIGURES = Path("plots/figures")


class FitFiles(NamedTuple):
    """What `evaluate@<fit>` wrote: its numbers, per-image results, curves and figure arrays."""

    scores: FitScores
    images: pd.DataFrame
    estimators: pd.DataFrame
    rate_distortion: pd.DataFrame
    arrays: dict[str, np.ndarray]


def read_fit(name: str) -> FitFiles:
    where, figure_data = Path("metrics/fits") / name, Path("evaluation") / name / "figure_data" / "figures.npz"
    if not (where / "scores.json").is_file():
        raise DataError(f"{where}/scores.json is missing: run `dvc repro evaluate@{name}` first")
    if not figure_data.is_file():
        raise DataError(f"{figure_data} is missing: run `dvc repro figure_data@{name}` first")
    with np.load(figure_data) as arrays:
        figure_arrays = dict(arrays)
    return FitFiles(FitScores.from_dict(json.loads((where / "scores.json").read_text())),
                    pd.read_csv(where / "images.csv"), pd.read_csv(where / "estimators.csv"),
                    pd.read_csv(where / "rate_distortion.csv"), figure_arrays)


@stage_main("visualize")
def main() -> None:
    params = load_params().reading(READS, "visualize")
    fits = {name: read_fit(name) for name in params.fits}
    reference = Reference.from_dict(json.loads(Path(REFERENCE).read_text())["reference"])
    images = {f: r.images for f, r in fits.items()}
    details = compare({f: r.scores for f, r in fits.items()}, images, reference, params.evaluate)
    curves = {"prior_mc": prior_curve(images), "denoise": denoise_table(details.fits),
              "estimators": pd.concat([r.estimators for r in fits.values()], ignore_index=True),
              "rate_distortion": pd.concat([r.rate_distortion for r in fits.values()], ignore_index=True)}
    report = render_report(details, params)
    # Opened before any drawing: with tracking.required an unreachable store fails before the work.
    with stage_run("visualize", to_flat_dict(params), params.tracking.experiment, params.tracking.required) as run:
        histories = {f: pd.read_csv(f"plots/train/{f}.csv") for f in fits}
        for key, path in CURVES.items():  # long form, a row per fit and point: DVC's plots draw every fit
            write_table(path, long_form(key, curves, histories))
        classes = class_names(params.data.dataset)
        figs = draw(Inputs({f: r.arrays for f, r in fits.items()}, histories, curves, details, params.visualize, classes))
        for name, fig in figs.items():
            save_figure(FIGURES / f"{name}.png", fig)
            plt.close(fig)
            run.log_artifact(FIGURES / f"{name}.png", "figures")
        write_json(DETAILS, details.to_dict())
        write_text(REPORT, report)
        write_json(HEADLINE, details.headline())  # last: DVC's metric, written once everything else is
        run.log_metrics(details.headline())
        run.log_artifact(REPORT)
        held_out = {f: {k: v for k, v in asdict(s.test).items() if v is not None} for f, s in details.fits.items()}
        run.call(link_and_rank, {f: s.model_md5 for f, s in details.fits.items()}, held_out, params.data.dataset)
    print(report)
    print(f"wrote {len(figs)} figures to {FIGURES}/")


if __name__ == "__main__":
    main()
