"""Stage 5: both fits on one footing, on held-out data: likelihoods (AIS, IWAE, prior sampling) and
their paired gap, denoising, latent structure, samples."""

import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

import torch

from latentfit.config import load_params, to_flat_dict
from latentfit.evaluation.run import evaluate
from latentfit.io import load_split, write_csv, write_json, write_text
from latentfit.mlmodels import link_and_rank
from latentfit.modelfile import load_decoder, load_vae
from latentfit.report import render_report
from latentfit.runtime import pick_device, seeded_generator, stage_main
from latentfit.tracking import stage_run

TRAIN, TEST = "data/prepared/train.pt", "data/prepared/test.pt"
VAE_MODEL, DIRECT_MODEL = "models/vae.pt", "models/direct.pt"
HEADLINE, DETAILS, REPORT = "metrics/evaluate.json", "metrics/evaluate_details.json", "metrics/report.md"
PRIOR_CURVE, DENOISE, ESTIMATORS = "plots/prior_mc.csv", "plots/denoise.csv", "plots/estimators.csv"
RATE_DISTORTION = "plots/rate_distortion.csv"
TRAIN_DRAW_SEED = 0  # the one binary draw of dynamically binarised training images that evaluate scores


@stage_main("evaluate")
def main() -> None:
    params = load_params()
    device = pick_device(params.device)
    g = seeded_generator(params.evaluate.seed, device)
    train, test = ({k: v.to(device) for k, v in load_split(path).items()} for path in (TRAIN, TEST))
    if train.pop("dynamic", None) is not None:  # dynamically binarised: score one fixed binary draw of it
        train["x"] = torch.bernoulli(train["x"], generator=seeded_generator(TRAIN_DRAW_SEED, device))
    vae, (direct, train_draws) = load_vae(VAE_MODEL, device), load_decoder(DIRECT_MODEL, device)

    with stage_run("evaluate", to_flat_dict(params), params.tracking.experiment, params.tracking.required) as run:
        result = evaluate(vae, direct, train, test, params.evaluate, hidden=params.model.hidden, generator=g,
                          train_draws=train_draws, log=run.log_epoch)
        details = result.details
        report = render_report(details, params)
        write_json(DETAILS, details.to_dict())
        write_csv(PRIOR_CURVE, result.prior_curve)
        write_csv(DENOISE, result.denoise)
        write_csv(ESTIMATORS, result.estimators)
        write_csv(RATE_DISTORTION, result.rate_distortion, columns=["fit", "beta", "rate", "distortion"])
        write_text(REPORT, report)
        write_json(HEADLINE, details.headline())  # last: DVC's metric, written once everything else is
        run.log_metrics(details.to_dict())
        run.log_artifact(REPORT)
        held_out = {fit: {k: v for k, v in asdict(scores.test).items() if v is not None}
                    for fit, scores in (("vae", details.vae), ("direct", details.direct))}
        run.call(link_and_rank, {"vae": VAE_MODEL, "direct": DIRECT_MODEL}, held_out, params.data.dataset)
    print(report)


if __name__ == "__main__":
    main()
