"""Stage 6: every figure of the notebook, plus the training curves and the evaluation's curves, as PNGs
under plots/figures/. With model.z_dim = 2 the latent space is drawn directly: a scatter of latent
means and both decoders over a grid of z, in place of the t-SNE."""

import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

from latentfit.config import load_params, to_flat_dict
from latentfit.evaluation.schema import Details
from latentfit.figure_data import curve_figures, model_figures
from latentfit.io import load_split, save_figure
from latentfit.modelfile import load_decoder, load_vae
from latentfit.runtime import pick_device, seeded_generator, stage_main
from latentfit.tracking import stage_run

TRAIN, TEST = "data/prepared/train.pt", "data/prepared/test.pt"
VAE_MODEL, DIRECT_MODEL, DETAILS = "models/vae.pt", "models/direct.pt", "metrics/evaluate_details.json"
HISTORIES = {"vae": "plots/train_vae.csv", "direct": "plots/train_direct.csv"}
CURVES = {"prior_mc": "plots/prior_mc.csv", "denoise": "plots/denoise.csv", "estimators": "plots/estimators.csv",
          "rate_distortion": "plots/rate_distortion.csv"}
FIGURES = Path("plots/figures")


@stage_main("visualize")
def main() -> None:
    params = load_params()
    device = pick_device(params.device)
    g = seeded_generator(params.visualize.seed, device)
    train, test = ({k: v.to(device) for k, v in load_split(path).items()} for path in (TRAIN, TEST))
    vae, (direct, _) = load_vae(VAE_MODEL, device), load_decoder(DIRECT_MODEL, device)
    # Opened before any drawing: with tracking.required an unreachable store fails before the work.
    with stage_run("visualize", to_flat_dict(params), params.tracking.experiment, params.tracking.required) as run:
        figs = model_figures(vae, direct, train, test, params.visualize, g)
        figs |= curve_figures({k: pd.read_csv(v) for k, v in HISTORIES.items()},
                              {k: pd.read_csv(v) for k, v in CURVES.items()}, Details.from_dict(json.loads(Path(DETAILS).read_text())))
        for name, fig in figs.items():
            save_figure(FIGURES / f"{name}.png", fig)
            plt.close(fig)
            run.log_artifact(FIGURES / f"{name}.png", "figures")
    print(f"wrote {len(figs)} figures to {FIGURES}/")


if __name__ == "__main__":
    main()
