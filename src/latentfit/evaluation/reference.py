"""The reference stage's work: what the data alone score, computed once for every fit (the entropy floor
of the test images, the feature classifier and the test images' feature statistics that every fit's
prior samples are compared against). Nothing here reads a fit."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from tqdm import tqdm

from latentfit.core.config import EvaluateParams
from latentfit.core.runtime import share_cpus
from latentfit.evaluation.schema import Reference
from latentfit.fitting.loops import make_optimizer
from latentfit.fitting.posthoc import Classifier, fit_classifier


def entropy_floor(x: torch.Tensor) -> float:
    """Mean over images of sum_j H(y_j): no Bernoulli model can score grayscale data below it."""
    return float((F.binary_cross_entropy(x, x, reduction="none")).sum(-1).mean())


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between two Gaussians (mean, covariance)."""
    (mu_a, cov_a), (mu_b, cov_b) = a, b
    root = linalg.sqrtm(cov_a @ cov_b)
    root = root.real if np.iscomplexobj(root) else root  # numerical noise can leave tiny imaginary parts
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@torch.no_grad()
def features(classifier: Classifier, images: torch.Tensor) -> np.ndarray:
    classifier.eval()
    return classifier.features(images).cpu().numpy().astype(np.float64)


def reference(train: dict[str, torch.Tensor], test: dict[str, torch.Tensor], p: EvaluateParams,
              g: torch.Generator) -> tuple[Reference, Classifier, tuple[np.ndarray, np.ndarray]]:
    """What the data alone score, and the feature classifier with the test images' feature statistics
    that every fit's samples are compared against."""
    x_train, x_test = train["x"], test["x"]
    classifier = Classifier().to(x_train.device)
    records = fit_classifier(classifier, make_optimizer(classifier, p.classifier_lr), x_train, train["y"],
                             epochs=p.classifier_epochs, batch_size=p.classifier_batch_size, generator=g)
    for _ in tqdm(records, total=p.classifier_epochs, desc="feature classifier", leave=False):
        share_cpus()  # a neighbouring stage may have started or ended
    classifier.eval()
    n = min(p.fid_samples, len(x_test))
    stats = feature_stats(features(classifier, x_test[:n]))
    with torch.no_grad():
        accuracy = (classifier(x_test).argmax(1) == test["y"]).float().mean().item()
    data_fd = frechet_distance(feature_stats(features(classifier, x_train[:n])), stats)
    return Reference(entropy_floor(x_test), accuracy, data_fd), classifier, stats
