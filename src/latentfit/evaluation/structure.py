"""What is not a likelihood: denoising, the structure of the latent space, the quality of prior samples
(against the reference stage's feature classifier: evaluation/reference.py). Nothing here draws figures;
every random draw comes from a passed generator."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import silhouette_score
from sklearn.neighbors import KNeighborsClassifier

from latentfit.core.config import EvaluateParams
from latentfit.evaluation.blocks import Block, Part
from latentfit.evaluation.reference import feature_stats, features, frechet_distance
from latentfit.evaluation.schema import Denoise, Latent, flip_key
from latentfit.fitting.posthoc import Classifier, load_classifier
from latentfit.inference.reconstruct import encode, flip_pixels, reconstruct
from latentfit.model.files import FitModel
from latentfit.model.likelihood import bernoulli_log_prob
from latentfit.model.networks import VAE, Decoder


@torch.no_grad()
def reconstruction_errors(logits: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """BCE (nats per image) and per-pixel MSE of reconstructions against the clean images."""
    return {"bce": float(-bernoulli_log_prob(clean, logits).mean()),
            "mse": float((torch.sigmoid(logits) - clean).pow(2).mean())}


@torch.no_grad()
def denoising(fit: FitModel, clean: torch.Tensor, flip_probs: list[float], candidates: int,
              shared: Callable[[str], torch.Generator]) -> dict[str, Denoise]:
    """Per flip probability, the fit's reconstruction of noisy images against the clean ones. The noise and
    the searched draws come from streams every fit shares: each fit sees the same noisy images."""
    results = {}
    for prob in flip_probs:
        key = flip_key(prob)
        noisy = flip_pixels(clean, prob, shared(f"denoise_noise_{key}"))
        errors = reconstruction_errors(reconstruct(fit, noisy, candidates, shared(f"denoise_search_{key}")), clean)
        results[key] = Denoise(flip_prob=prob, bce=errors["bce"], mse=errors["mse"])
    return results


def knn_accuracy(train_z: np.ndarray, train_labels: np.ndarray, test_z: np.ndarray, test_labels: np.ndarray,
                 neighbours: int = 5) -> float:
    """Accuracy of a k-nearest-neighbour classifier of latent means, fit on train, scored on test."""
    return float(KNeighborsClassifier(n_neighbors=neighbours).fit(train_z, train_labels).score(test_z, test_labels))


def silhouette(z: np.ndarray, labels: np.ndarray, points: int, seed: int) -> float:
    """Silhouette score of the label clusters in latent space (-1 .. 1, higher is better separated)."""
    return float(silhouette_score(z, labels, sample_size=min(points, len(z)), random_state=seed))


def latent_structure(encoder: VAE, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                     y_test: torch.Tensor, p: EvaluateParams) -> Latent:
    """kNN accuracy and silhouette of an encoder's latent means."""
    z_test, labels = encode(encoder, x_test)[0].cpu().numpy(), y_test.cpu().numpy()
    train_z = encode(encoder, x_train)[0].cpu().numpy()
    return Latent(knn_accuracy=knn_accuracy(train_z, y_train.cpu().numpy(), z_test, labels, p.knn_neighbours),
                  silhouette=silhouette(z_test, labels, p.silhouette_points, p.seed))


@torch.no_grad()
def sample_fd(decoder: Decoder, classifier: Classifier, reference: tuple[np.ndarray, np.ndarray], n: int,
              g: torch.Generator) -> float:
    """Frechet distance between classifier features of n prior samples and of the test images."""
    device = next(decoder.parameters()).device
    samples = torch.sigmoid(decoder.eval()(torch.randn(n, decoder.z_dim, generator=g, device=device)))
    return frechet_distance(feature_stats(features(classifier, samples)), reference)


CLASSIFIER = "models/classifier.pt"  # the reference stage's feature classifier


def structure_part(b: Block) -> Part:
    """Denoising, the classes in the latent space and the samples' Frechet distance, as the part
    evaluate@<fit> merges."""
    p, x = b.params.evaluate, b.test["x"]
    classifier, reference = load_classifier(CLASSIFIER, b.device)
    denoise = denoising(b.fit, x[: p.denoise_images], list(p.flip_probs), p.search_candidates, b.shared)
    latent = latent_structure(b.encoder(), b.train["x"], b.train["y"], x, b.test["y"], p)
    fd = sample_fd(b.fit.decoder, classifier, reference, min(p.fid_samples, len(x)), b.own("samples"))
    return Part({"denoise": {k: dataclasses.asdict(v) for k, v in denoise.items()},
                 "latent": dataclasses.asdict(latent), "sample_fd": fd}, {})
