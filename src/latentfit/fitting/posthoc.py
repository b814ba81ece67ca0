"""What the evaluate stage fits on top of the trained models (apart from the training loops, so a
change here re-runs evaluate only): an encoder for a frozen decoder, and the feature classifier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from latentfit.core.errors import DataError
from latentfit.fitting.loops import batches
from latentfit.model.networks import PIXELS, VAE, Decoder


class Classifier(nn.Module):
    """A small MLP classifier of images; its penultimate activations are the features for the
    Frechet distance between prior samples and test images (a stand-in for Inception features)."""

    def __init__(self, hidden: int = 256, features: int = 64, classes: int = 10, x_dim: int = PIXELS):
        super().__init__()
        # features are pre-activations: ReLU outputs have dead units, whose covariance is singular
        self.body = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, features))
        self.out = nn.Sequential(nn.ReLU(), nn.Linear(features, classes))

    def features(self, y: torch.Tensor) -> torch.Tensor:
        return self.body(y)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(y))


def posthoc_encoder(decoder: Decoder, hidden: int) -> VAE:
    """A fresh encoder in front of a frozen decoder: train it with `fit_vae` and an optimiser over
    `.encoder` only. Gives the direct fit (which has none) an encoder for importance sampling."""
    model = VAE(decoder.z_dim, hidden).to(next(decoder.parameters()).device)
    model.decoder = decoder.requires_grad_(False)
    return model


def fit_classifier(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor, *,
                   epochs: int, batch_size: int, generator: torch.Generator) -> Iterator[dict]:
    """Cross-entropy training of the feature classifier; yields the epoch's mean loss."""
    for epoch in range(1, epochs + 1):
        model.train()
        total = torch.zeros((), device=x.device)
        for idx in batches(len(x), batch_size, generator, x.device):
            loss = nn.functional.cross_entropy(model(x[idx]), labels[idx], reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            (loss / len(idx)).backward()
            optimizer.step()
            total += loss.detach()
        yield {"epoch": epoch, "loss": total.item() / len(x)}


def classifier_file(classifier: Classifier, stats: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """models/classifier.pt: the reference stage's feature classifier (CPU tensors) and the test images'
    feature mean and covariance."""
    return {"state_dict": {k: v.cpu() for k, v in classifier.state_dict().items()},
            "mean": torch.from_numpy(stats[0]), "cov": torch.from_numpy(stats[1])}


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> tuple[Classifier, tuple[np.ndarray,
                                                                                                    np.ndarray]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing: run the reference stage first (`dvc repro reference`)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    classifier = Classifier().to(device)
    classifier.load_state_dict(saved["state_dict"])
    return classifier.eval(), (saved["mean"].numpy(), saved["cov"].numpy())
