"""Stage 5: compare both fits on the test split; writes metrics/evaluate.json."""

import time

import torch

from latentfit.config import load_params, to_flat_dict
from latentfit.data import load_split
from latentfit.evaluation import denoising, entropy_floor, prior_mc_nll, vae_elbo
from latentfit.inference import load_model
from latentfit.io import write_json
from latentfit.runtime import pick_device, seeded_generator, stage_main
from latentfit.tracking import stage_run

TEST, VAE_MODEL, DIRECT_MODEL = "data/prepared/test.pt", "models/vae.pt", "models/direct.pt"
METRICS = "metrics/evaluate.json"


@stage_main("evaluate")
def main() -> None:
    params = load_params()
    p, device = params.evaluate, pick_device(params.device)
    generator = seeded_generator(p.seed, device)
    x = load_split(TEST)["x"].to(device)
    vae, _ = load_model(VAE_MODEL, device)
    direct, saved = load_model(DIRECT_MODEL, device)
    start = time.perf_counter()

    with stage_run("evaluate", to_flat_dict(params), params.tracking.experiment, params.tracking.required) as run:
        draws = torch.randn(p.prior_mc_samples, vae.decoder.z_dim, generator=generator, device=device)
        direct_test = {"prior_mc_nll": prior_mc_nll(direct, x, draws, p.batch_size)}
        if saved.get("train_draws") is not None:
            direct_test["train_draws_nll"] = prior_mc_nll(direct, x, saved["train_draws"], p.batch_size)
        metrics = {
            "vae": {"test": {**vae_elbo(vae, x, generator, p.batch_size),
                             "prior_mc_nll": prior_mc_nll(vae.decoder, x, draws, p.batch_size)}},
            "direct": {"test": direct_test},
            "data": {"test": {"entropy_floor": entropy_floor(x)}},
            "denoise": denoising(vae, direct, x[: p.denoise_images], list(p.flip_probs),
                                 p.search_candidates, generator),
        }
        metrics["seconds"] = time.perf_counter() - start
        write_json(METRICS, metrics)
        run.log_metrics(metrics)
    print(f"VAE test -ELBO {metrics['vae']['test']['neg_elbo']:.2f}; prior-MC NLL ({p.prior_mc_samples} draws): "
          f"VAE {metrics['vae']['test']['prior_mc_nll']:.2f}, direct {direct_test['prior_mc_nll']:.2f}")


if __name__ == "__main__":
    main()
