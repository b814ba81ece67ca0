"""Stage 5, once per fit (`evaluate@<fit>`, `python stages/evaluate.py <fit>`): one fit on held-out data,
on its own: likelihoods (AIS, IWAE, prior sampling) per image, denoising, latent structure, samples, the
anatomy of its bound, and the arrays of its figures. Reads only its own model file, so a change to one
fit re-evaluates that fit alone; the final stage compares the fits."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

import numpy as np
import torch

from latentfit.core.config import load_params, to_flat_dict
from latentfit.core.errors import ParamsError
from latentfit.core.fits import names
from latentfit.core.io import atomic_dir, file_md5, load_split, write_csv, write_json, write_table
from latentfit.core.runtime import pick_device, seeded_generator, stage_main, where
from latentfit.core.tracking import stage_run
from latentfit.evaluation.run import RD_COLUMNS, evaluate_fit
from latentfit.evaluation.schema import RanOn
from latentfit.fitting.posthoc import load_classifier
from latentfit.model.files import load_fit
from latentfit.visualize.arrays import fit_figure_data

# the params it reads: its `params` in dvc.yaml (`python -m latentfit.dag` checks), and all it may read
READS = ("evaluate", "visualize", "device")

TRAIN, TEST, CLASSIFIER = "data/prepared/train.pt", "data/prepared/test.pt", "models/classifier.pt"
TRAIN_DRAW_SEED = 0  # the one binary draw of dynamically binarised training images that evaluate scores


@stage_main("evaluate")
def main() -> None:
    fit_name = sys.argv[1] if len(sys.argv) == 2 else ""
    if fit_name not in names():
        raise ParamsError(f"usage: python stages/evaluate.py FIT, with FIT one of {', '.join(names())} (got "
                          f"{fit_name or 'nothing'}); `dvc repro evaluate@{names()[0]}` runs it for you")
    model_path, out = Path(f"models/{fit_name}.pt"), Path(f"metrics/{fit_name}")
    params = load_params().reading(READS, f"evaluate@{fit_name}")
    device = pick_device(params.device)
    train, test = ({k: v.to(device) for k, v in load_split(path).items()} for path in (TRAIN, TEST))
    if train.pop("dynamic", None) is not None:  # dynamically binarised: score one fixed binary draw of it
        train["x"] = torch.bernoulli(train["x"], generator=seeded_generator(TRAIN_DRAW_SEED, device))
    fit = load_fit(fit_name, model_path, device)
    classifier, reference = load_classifier(CLASSIFIER, device)

    with stage_run(f"evaluate@{fit_name}", to_flat_dict(params), params.tracking.experiment,
                   params.tracking.required, tags=where(device)) as run:
        result = evaluate_fit(fit, train, test, params.evaluate, classifier=classifier, reference=reference,
                              model_md5=file_md5(model_path), log=run.log_epoch,
                              ran_on=RanOn(**where(device), trained_on=fit.trained_on))
        start = time.perf_counter()
        arrays = fit_figure_data(fit, result.likelihoods.encoder, train, test, params.visualize)
        result.timings["figure_data"] = time.perf_counter() - start
        with atomic_dir(out) as tmp:  # the fit's results appear together, or not at all
            write_table(tmp / "images.csv", result.images)
            write_csv(tmp / "estimators.csv", result.estimators)
            write_csv(tmp / "rate_distortion.csv", result.rate_distortion, columns=RD_COLUMNS)
            np.savez_compressed(tmp / "figures.npz", **arrays)
            write_json(tmp / "scores.json", result.scores.to_dict())
        run.log_metrics(result.scores.to_dict())
        run.log_metrics({f"seconds.{block}": value for block, value in result.timings.items()})
    test_scores = result.scores.test
    print(f"{fit_name}: AIS NLL {test_scores.ais_nll:.2f} ± {test_scores.ais_nll_se:.2f}, IWAE NLL "
          f"{test_scores.iwae_nll:.2f}, prior-sampling NLL {test_scores.prior_mc_nll:.2f} -> {out}/")
    print("seconds: " + ", ".join(f"{block} {value:.1f}" for block, value in result.timings.items()))


if __name__ == "__main__":
    main()
