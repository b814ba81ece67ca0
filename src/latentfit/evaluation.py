"""The comparison of the two fits on held-out data: `evaluate` runs every metric of the evaluate
stage, and the metrics that are not likelihoods (denoising, latent structure, sample quality) are here.
Nothing here draws figures; every random draw comes from a passed generator."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from sklearn.metrics import silhouette_score
from sklearn.neighbors import KNeighborsClassifier
from tqdm import tqdm

from .ais import Schedule, ais_log_prob, batched, bdmc
from .estimators import (
    iwae_log_prob_curve,
    paired_difference,
    prior_mc_log_prob,
    prior_mc_nll,
    standard_error,
    vae_elbo,
)
from .inference import encode, flip_pixels, prior_search, vae_reconstruct
from .likelihood import bernoulli_log_prob
from .models import VAE, Decoder
from .posthoc import Classifier, fit_classifier, posthoc_encoder
from .training import fit_vae, make_optimizer


def entropy_floor(x: torch.Tensor) -> float:
    """Mean over images of sum_j H(y_j): no Bernoulli model can score grayscale data below it."""
    return float((F.binary_cross_entropy(x, x, reduction="none")).sum(-1).mean())


@torch.no_grad()
def reconstruction_errors(logits: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """BCE (nats per image) and per-pixel MSE of reconstructions against the clean images."""
    return {"bce": float(-bernoulli_log_prob(clean, logits).mean()),
            "mse": float((torch.sigmoid(logits) - clean).pow(2).mean())}


@torch.no_grad()
def denoising(vae: VAE, direct: Decoder, clean: torch.Tensor, flip_probs: list[float], candidates: int,
              generator: torch.Generator) -> dict[str, dict[str, float]]:
    """Per flip probability: VAE encode-decode (posterior mean) and direct-fit prior search, vs clean."""
    results = {}
    for prob in flip_probs:
        noisy = flip_pixels(clean, prob, generator)
        vae_err = reconstruction_errors(vae_reconstruct(vae, noisy), clean)
        draws = torch.randn(candidates, direct.z_dim, generator=generator, device=clean.device)
        z = prior_search(direct, noisy, draws)
        direct_err = reconstruction_errors(direct(z), clean)
        results[flip_key(prob)] = {"flip_prob": prob, "vae_bce": vae_err["bce"], "direct_bce": direct_err["bce"],
                                   "vae_mse": vae_err["mse"], "direct_mse": direct_err["mse"]}
    return results


def flip_key(prob: float) -> str:
    """A metric key without dots, so `dvc exp show` columns stay unambiguous: 0.02 -> 'flip_0_02'."""
    return "flip_" + f"{prob:g}".replace(".", "_")


def knn_accuracy(train_z: np.ndarray, train_labels: np.ndarray, test_z: np.ndarray, test_labels: np.ndarray,
                 neighbours: int = 5) -> float:
    """Accuracy of a k-nearest-neighbour classifier of latent means, fit on train, scored on test."""
    return float(KNeighborsClassifier(n_neighbors=neighbours).fit(train_z, train_labels).score(test_z, test_labels))


def silhouette(z: np.ndarray, labels: np.ndarray, points: int, seed: int) -> float:
    """Silhouette score of the label clusters in latent space (-1 .. 1, higher is better separated)."""
    return float(silhouette_score(z, labels, sample_size=min(points, len(z)), random_state=seed))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between Gaussians fitted to two feature sets."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    root = root.real if np.iscomplexobj(root) else root  # numerical noise can leave tiny imaginary parts
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@torch.no_grad()
def accuracy(classifier: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    classifier.eval()
    return (classifier(x).argmax(1) == labels).float().mean().item()


@dataclass
class Evaluation:
    """What the evaluate stage writes: the headline (dvc exp show's columns), every metric, and the
    rows of its CSV curves."""

    headline: dict[str, Any]
    metrics: dict[str, Any]
    prior_curve: list[dict[str, float]]
    denoise: list[dict[str, float]]
    estimators: list[dict[str, Any]]


def evaluate(vae: VAE, direct: Decoder, train: dict[str, torch.Tensor], test: dict[str, torch.Tensor], p: Any, *,
             hidden: int, generator: torch.Generator, train_draws: torch.Tensor | None = None,
             log: Callable[[dict, str], None] = lambda record, prefix: None) -> Evaluation:
    """Both fits on one footing. `p` holds the evaluate params (config.EvaluateParams), `train_draws`
    the direct fit's own M training draws if it kept them; `log(record, prefix)` receives the post-hoc
    encoders' epoch records."""
    start, g = time.perf_counter(), generator
    x_train, x = train["x"], test["x"]
    decoders = {"vae": vae.decoder, "direct": direct}
    posthoc = {name: fit_posthoc_encoder(dec, x_train, hidden, p, g, lambda r, n=name: log(r, f"posthoc_{n}."))
               for name, dec in decoders.items()}

    # per-image log-likelihoods: prior sampling on every test image, IWAE on the first iwae_images, AIS on
    # the first ais_images; the paired gaps compare the fits on exactly the same images
    draws = torch.randn(p.prior_mc_samples, vae.decoder.z_dim, generator=g, device=x.device)
    sizes = [*p.prior_mc_curve, len(draws)]
    prior = {name: prior_mc_log_prob(dec, x, draws, sizes, p.batch_size) for name, dec in decoders.items()}
    ks = [*p.iwae_curve, p.iwae_samples]
    iwae_models = {"vae": vae, "direct": posthoc["direct"], "vae_posthoc": posthoc["vae"]}
    iwae = {name: _iwae(model, x[: p.iwae_images], ks, g) for name, model in iwae_models.items()}
    schedule = ais_schedule(p)
    ais_x = x[: p.ais_images]
    ais = {name: batched(lambda y, d=dec: ais_log_prob(d, y, chains=p.ais_chains, schedule=schedule, generator=g),
                         ais_x, batch_size=p.ais_batch_size)
           for name, dec in tqdm(decoders.items(), desc="AIS", leave=False)}
    checks = {name: bdmc(dec, p.bdmc_images, chains=p.ais_chains, schedule=schedule, generator=g,
                         batch_size=p.ais_batch_size) for name, dec in decoders.items()}

    nll = lambda log_p: -log_p
    m_all, k_all = len(draws), p.iwae_samples
    floor = entropy_floor(x)
    metrics: dict[str, Any] = {"vae": {"test": vae_elbo(vae, x, g, p.batch_size)}, "direct": {"test": {}}}
    for name in decoders:
        metrics[name]["test"].update({
            "ais_nll": nll(ais[name]).mean().item(), "ais_nll_se": standard_error(ais[name]),
            "iwae_nll": nll(iwae[name][k_all]).mean().item(), "iwae_nll_se": standard_error(iwae[name][k_all]),
            "prior_mc_nll": nll(prior[name][m_all]).mean().item(),
            "excess": nll(ais[name]).mean().item() - entropy_floor(ais_x)})
    metrics["vae"]["test"]["iwae_nll_posthoc"] = nll(iwae["vae_posthoc"][k_all]).mean().item()
    if train_draws is not None:
        metrics["direct"]["test"]["train_draws_nll"] = prior_mc_nll(direct, x, train_draws, p.batch_size)
    metrics["gap"] = {  # direct - VAE, per image: positive means the VAE's decoder is the better model
        "ais": paired_difference(nll(ais["direct"]), nll(ais["vae"])),
        "iwae": paired_difference(nll(iwae["direct"][k_all]), nll(iwae["vae"][k_all])),
        "prior_mc": paired_difference(nll(prior["direct"][m_all]), nll(prior["vae"][m_all]))}
    n = p.ais_images  # the verdict: every estimator on the same first test images, paired
    metrics["verdict"] = {
        est: {"vae": nll(v)[:n].mean().item(), "direct": nll(d)[:n].mean().item(),
              **paired_difference(nll(d)[:n], nll(v)[:n])}
        for est, (v, d) in {"ais": (ais["vae"], ais["direct"]),
                            "iwae": (iwae["vae"][k_all], iwae["direct"][k_all]),
                            "prior_mc": (prior["vae"][m_all], prior["direct"][m_all])}.items()}
    metrics["bdmc"] = checks
    metrics["data"] = {"test": {"entropy_floor": floor}}
    metrics["denoise"] = denoising(vae, direct, x[: p.denoise_images], list(p.flip_probs), p.search_candidates, g)
    metrics["latent"] = latent_structure({"vae": vae, "direct": posthoc["direct"]}, x_train, train["y"], x,
                                         test["y"], p)
    metrics["samples"] = sample_quality(decoders, train, test, p, g)
    curve = estimator_curves(decoders, x[: p.ais_curve_images], prior, iwae, ais, p, g)
    metrics["seconds"] = time.perf_counter() - start

    headline = {"ais": {"vae": metrics["vae"]["test"]["ais_nll"], "direct": metrics["direct"]["test"]["ais_nll"],
                        "gap": metrics["gap"]["ais"]["mean"]},
                "iwae": {"vae": metrics["vae"]["test"]["iwae_nll"], "direct": metrics["direct"]["test"]["iwae_nll"],
                         "gap": metrics["gap"]["iwae"]["mean"]},
                "nelbo": {"vae": metrics["vae"]["test"]["neg_elbo"]},
                "prior": {"direct": metrics["direct"]["test"]["prior_mc_nll"]}}
    prior_curve = [{"samples": m, "vae": -prior["vae"][m].mean().item(), "direct": -prior["direct"][m].mean().item()}
                   for m in sorted(prior["vae"])]
    return Evaluation(headline, metrics, prior_curve, list(metrics["denoise"].values()), curve)


def ais_schedule(p: Any) -> Schedule:
    return Schedule(steps=p.ais_steps, leapfrog=p.ais_leapfrog, beta_min=p.ais_beta_min)


def _iwae(model: VAE, x: torch.Tensor, ks: list[int], g: torch.Generator, batch_size: int = 32):
    parts = [iwae_log_prob_curve(model, y, ks, g) for y in x.split(batch_size)]
    return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}


def fit_posthoc_encoder(decoder: Decoder, x_train: torch.Tensor, hidden: int, p: Any, g: torch.Generator,
                        log: Callable[[dict], None]) -> VAE:
    """An amortised Gaussian encoder fitted by the ELBO to a frozen decoder: the direct fit has none,
    and the VAE's decoder gets one too, as a control of what such an encoder costs."""
    model = posthoc_encoder(decoder, hidden)
    records = fit_vae(model, make_optimizer(model.encoder, p.encoder_lr), x_train, epochs=p.encoder_epochs,
                      batch_size=p.encoder_batch_size, generator=g, what="evaluate's post-hoc encoder",
                      lr_key="evaluate.encoder_lr")
    for record in tqdm(records, total=p.encoder_epochs, desc="post-hoc encoder", leave=False):
        log(record)
    return model.eval()


def estimator_curves(decoders: dict[str, Decoder], x: torch.Tensor, prior: dict, iwae: dict, ais: dict, p: Any,
                     g: torch.Generator) -> list[dict[str, Any]]:
    """Each estimator's NLL against its cost (decoder passes per image), on the same first images:
    prior sampling against M, IWAE against k, AIS against the length of its schedule."""
    n, rows = len(x), []
    for name, dec in decoders.items():
        for m, log_p in prior[name].items():
            rows.append({"estimator": "prior", "fit": name, "cost": m, "nll": -log_p[:n].mean().item()})
        for k, log_p in iwae[name].items():
            rows.append({"estimator": "iwae", "fit": name, "cost": k, "nll": -log_p[:n].mean().item()})
        lengths = {steps: None for steps in p.ais_curve_steps}
        lengths[p.ais_steps] = ais[name][:n]
        for steps, log_p in sorted(lengths.items()):
            schedule = dataclasses.replace(ais_schedule(p), steps=steps)
            if log_p is None:
                log_p = ais_log_prob(dec, x, chains=p.ais_chains, schedule=schedule, generator=g)
            rows.append({"estimator": "ais", "fit": name, "cost": schedule.likelihood_evaluations(p.ais_chains),
                         "nll": -log_p.mean().item(), "steps": steps})
    return rows


def latent_structure(encoders: dict[str, VAE], x_train, y_train, x_test, y_test, p: Any) -> dict[str, dict]:
    """kNN accuracy and silhouette of each encoder's latent means (the direct fit's: its post-hoc encoder)."""
    out = {}
    for name, model in encoders.items():
        z_test = encode(model, x_test)[0].cpu().numpy()
        labels = y_test.cpu().numpy()
        out[name] = {"knn_accuracy": knn_accuracy(encode(model, x_train)[0].cpu().numpy(), y_train.cpu().numpy(),
                                                  z_test, labels, p.knn_neighbours),
                     "silhouette": silhouette(z_test, labels, p.silhouette_points, p.seed)}
    return out


def sample_quality(decoders: dict[str, Decoder], train: dict, test: dict, p: Any, g: torch.Generator) -> dict:
    """Frechet distance between classifier features of prior samples and of test images."""
    x_train, x_test = train["x"], test["x"]
    classifier = Classifier().to(x_train.device)
    records = fit_classifier(classifier, make_optimizer(classifier, p.classifier_lr), x_train, train["y"],
                             epochs=p.classifier_epochs, batch_size=p.classifier_batch_size, generator=g)
    for _ in tqdm(records, total=p.classifier_epochs, desc="feature classifier", leave=False):
        pass
    classifier.eval()
    n = min(p.fid_samples, len(x_test))

    @torch.no_grad()
    def features(images: torch.Tensor) -> np.ndarray:
        return classifier.features(images).double().cpu().numpy()

    reference = features(x_test[:n])
    out = {"classifier_accuracy": accuracy(classifier, x_test, test["y"]),
           "data_fid": frechet_distance(features(x_train[:n]), reference)}  # the floor: real vs real
    for name, decoder in decoders.items():
        with torch.no_grad():
            samples = torch.sigmoid(decoder(torch.randn(n, decoder.z_dim, generator=g, device=x_test.device)))
        out[name] = {"fid": frechet_distance(features(samples), reference)}
    return out
