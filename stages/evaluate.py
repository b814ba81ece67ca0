"""Stage 5: both fits on one footing, on held-out data: likelihoods, denoising, latents, samples."""

import time

import numpy as np
import torch
from tqdm import tqdm

from latentfit.config import load_params, to_flat_dict
from latentfit.data import load_split
from latentfit.evaluation import (
    accuracy,
    denoising,
    entropy_floor,
    frechet_distance,
    iwae_nll,
    knn_accuracy,
    prior_mc_curve,
    prior_mc_nll,
    silhouette,
    vae_elbo,
)
from latentfit.inference import encode, load_model
from latentfit.io import write_csv, write_json, write_text
from latentfit.models import Classifier
from latentfit.report import render_report
from latentfit.runtime import pick_device, seeded_generator, stage_main
from latentfit.tracking import stage_run
from latentfit.training import fit_classifier, fit_vae, make_optimizer, posthoc_encoder

TRAIN, TEST = "data/prepared/train.pt", "data/prepared/test.pt"
VAE_MODEL, DIRECT_MODEL = "models/vae.pt", "models/direct.pt"
METRICS, REPORT = "metrics/evaluate.json", "metrics/report.md"
PRIOR_CURVE, DENOISE = "plots/prior_mc.csv", "plots/denoise.csv"


@stage_main("evaluate")
def main() -> None:
    params = load_params()
    p, device = params.evaluate, pick_device(params.device)
    g = seeded_generator(p.seed, device)
    train, test = load_split(TRAIN), load_split(TEST)
    x_train, x, labels = train["x"].to(device), test["x"].to(device), test["y"].numpy()
    vae, _ = load_model(VAE_MODEL, device)
    direct, saved = load_model(DIRECT_MODEL, device)
    decoders = {"vae": vae.decoder, "direct": direct}
    start = time.perf_counter()

    with stage_run("evaluate", to_flat_dict(params), params.tracking.experiment, params.tracking.required) as run:
        # The direct fit has no encoder: fit one post hoc to its frozen decoder, and one to the
        # VAE's decoder as a control of what such an encoder costs against the amortised one.
        posthoc = {}
        for name, decoder in decoders.items():
            model = posthoc_encoder(decoder, params.model.hidden)
            records = fit_vae(model, make_optimizer(model.encoder, p.encoder_lr), x_train, epochs=p.encoder_epochs,
                              batch_size=p.encoder_batch_size, generator=g)
            for record in tqdm(records, total=p.encoder_epochs, desc=f"post-hoc encoder ({name})", leave=False):
                run.log_epoch(record, prefix=f"posthoc_{name}.")
            tqdm.write(f"post-hoc encoder for the {name} decoder: train -ELBO {record['neg_elbo']:.2f}")
            posthoc[name] = model.eval()

        floor = entropy_floor(x)
        draws = torch.randn(p.prior_mc_samples, vae.decoder.z_dim, generator=g, device=device)
        curves = {name: prior_mc_curve(dec, x, draws, [*p.prior_mc_curve, len(draws)], p.batch_size)
                  for name, dec in decoders.items()}
        sub = x[: p.iwae_images]
        iwae = {name: iwae_nll(model, sub, p.iwae_samples, g)
                for name, model in (("vae", vae), ("direct", posthoc["direct"]), ("vae_posthoc", posthoc["vae"]))}
        metrics = {
            "vae": {"test": {**vae_elbo(vae, x, g, p.batch_size), "prior_mc_nll": curves["vae"][len(draws)],
                             "iwae_nll": iwae["vae"][0], "iwae_nll_se": iwae["vae"][1],
                             "iwae_nll_posthoc": iwae["vae_posthoc"][0], "excess": iwae["vae"][0] - floor}},
            "direct": {"test": {"prior_mc_nll": curves["direct"][len(draws)], "iwae_nll": iwae["direct"][0],
                                "iwae_nll_se": iwae["direct"][1], "excess": iwae["direct"][0] - floor}},
            "data": {"test": {"entropy_floor": floor}},
        }
        if saved.get("train_draws") is not None:
            metrics["direct"]["test"]["train_draws_nll"] = prior_mc_nll(direct, x, saved["train_draws"], p.batch_size)

        metrics["denoise"] = denoising(vae, direct, x[: p.denoise_images], list(p.flip_probs), p.search_candidates, g)

        encoders = {"vae": vae, "direct": posthoc["direct"]}
        metrics["latent"] = {}
        for name, model in encoders.items():
            z_test = encode(model, x)[0].cpu().numpy()
            metrics["latent"][name] = {
                "knn_accuracy": knn_accuracy(encode(model, x_train)[0].cpu().numpy(), train["y"].numpy(), z_test,
                                             labels, p.knn_neighbours),
                "silhouette": silhouette(z_test, labels, p.silhouette_points, p.seed)}

        metrics["samples"] = sample_quality(decoders, x_train, train["y"].to(device), x, test["y"].to(device), p, g)
        metrics["seconds"] = time.perf_counter() - start

        write_json(METRICS, metrics)
        write_csv(PRIOR_CURVE, [{"samples": m, "vae": curves["vae"][m], "direct": curves["direct"][m]}
                                for m in sorted(curves["vae"])])
        write_csv(DENOISE, list(metrics["denoise"].values()))
        report = render_report(metrics, params)
        write_text(REPORT, report)
        run.log_metrics(metrics)
        run.log_artifact(REPORT)
    print(report)


def sample_quality(decoders, x_train, y_train, x_test, y_test, p, g) -> dict:
    """Frechet distance between classifier features of prior samples and of test images."""
    classifier = Classifier().to(x_train.device)
    records = fit_classifier(classifier, make_optimizer(classifier, 1e-3), x_train, y_train,
                             epochs=p.classifier_epochs, batch_size=128, generator=g)
    for _ in tqdm(records, total=p.classifier_epochs, desc="feature classifier", leave=False):
        pass
    classifier.eval()
    n = min(p.fid_samples, len(x_test))

    def features(images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return classifier.features(images).double().cpu().numpy()

    reference = features(x_test[:n])
    out = {"classifier_accuracy": accuracy(classifier, x_test, y_test),
           "data_fid": frechet_distance(features(x_train[:n]), reference)}  # the floor: real vs real
    for name, decoder in decoders.items():
        with torch.no_grad():
            samples = torch.sigmoid(decoder(torch.randn(n, decoder.z_dim, generator=g, device=x_test.device)))
        out[name] = {"fid": frechet_distance(features(samples), reference)}
    return out


if __name__ == "__main__":
    main()
