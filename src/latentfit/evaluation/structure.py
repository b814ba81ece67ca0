"""What is not a likelihood: denoising, the structure of the latent space, the quality of prior samples.
Nothing here draws figures; every random draw comes from a passed generator."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from sklearn.metrics import silhouette_score
from sklearn.neighbors import KNeighborsClassifier
from tqdm import tqdm

from ..config import EvaluateParams
from ..inference import encode, flip_pixels, prior_search, vae_reconstruct
from ..likelihood import bernoulli_log_prob
from ..models import VAE, Decoder
from ..posthoc import Classifier, fit_classifier
from ..runtime import share_cpus
from ..training import make_optimizer
from .schema import Denoise, Fid, Latent, LatentPair, Samples, flip_key


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
              generator: torch.Generator) -> dict[str, Denoise]:
    """Per flip probability: VAE encode-decode (posterior mean) and direct-fit prior search, vs clean."""
    results = {}
    for prob in flip_probs:
        noisy = flip_pixels(clean, prob, generator)
        vae_err = reconstruction_errors(vae_reconstruct(vae, noisy), clean)
        draws = torch.randn(candidates, direct.z_dim, generator=generator, device=clean.device)
        z = prior_search(direct, noisy, draws)
        direct_err = reconstruction_errors(direct(z), clean)
        results[flip_key(prob)] = Denoise(flip_prob=prob, vae_bce=vae_err["bce"], direct_bce=direct_err["bce"],
                                          vae_mse=vae_err["mse"], direct_mse=direct_err["mse"])
    return results


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


def latent_structure(encoders: dict[str, VAE], x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                     y_test: torch.Tensor, p: EvaluateParams) -> LatentPair:
    """kNN accuracy and silhouette of each encoder's latent means (the direct fit's: its post-hoc encoder)."""
    out = {}
    for name, model in encoders.items():
        z_test = encode(model, x_test)[0].cpu().numpy()
        labels = y_test.cpu().numpy()
        out[name] = Latent(knn_accuracy=knn_accuracy(encode(model, x_train)[0].cpu().numpy(), y_train.cpu().numpy(),
                                                     z_test, labels, p.knn_neighbours),
                           silhouette=silhouette(z_test, labels, p.silhouette_points, p.seed))
    return LatentPair(vae=out["vae"], direct=out["direct"])


def sample_quality(decoders: dict[str, Decoder], train: dict[str, torch.Tensor], test: dict[str, torch.Tensor],
                   p: EvaluateParams, g: torch.Generator) -> Samples:
    """Frechet distance between classifier features of prior samples and of test images."""
    x_train, x_test = train["x"], test["x"]
    classifier = Classifier().to(x_train.device)
    records = fit_classifier(classifier, make_optimizer(classifier, p.classifier_lr), x_train, train["y"],
                             epochs=p.classifier_epochs, batch_size=p.classifier_batch_size, generator=g)
    for _ in tqdm(records, total=p.classifier_epochs, desc="feature classifier", leave=False):
        share_cpus()  # a neighbouring stage may have started or ended
    classifier.eval()
    n = min(p.fid_samples, len(x_test))

    @torch.no_grad()
    def features(images: torch.Tensor) -> np.ndarray:
        return classifier.features(images).double().cpu().numpy()

    reference = features(x_test[:n])
    data_fid = frechet_distance(features(x_train[:n]), reference)  # the floor: real vs real
    fids = {}
    for name, decoder in decoders.items():
        with torch.no_grad():
            samples = torch.sigmoid(decoder(torch.randn(n, decoder.z_dim, generator=g, device=x_test.device)))
        fids[name] = Fid(frechet_distance(features(samples), reference))
    return Samples(classifier_accuracy=accuracy(classifier, x_test, test["y"]), data_fid=data_fid,
                   vae=fids["vae"], direct=fids["direct"])
