"""models/*.pt: what the training stages write and the later stages read back (apart from the code
that uses the models, so a change to that code does not re-run the trainings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latentfit.core.errors import DataError
from latentfit.model.networks import VAE, Decoder


def model_file(model: VAE | Decoder, **extra: Any) -> dict[str, Any]:
    """What models/*.pt hold: the architecture, the weights and any extra tensors."""
    decoder = model.decoder if isinstance(model, VAE) else model
    return {"kind": "vae" if isinstance(model, VAE) else "decoder", "z_dim": decoder.z_dim,
            "hidden": decoder.fc1.out_features, "state_dict": model.state_dict(), **extra}


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[VAE | Decoder, dict[str, Any]]:
    """Rebuild a model saved with `model_file`; returns it (in eval mode) and the file's contents."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing: run the training stages first (`dvc repro`)")
    saved = torch.load(path, map_location=device, weights_only=True)
    cls = VAE if saved["kind"] == "vae" else Decoder
    model = cls(saved["z_dim"], saved["hidden"]).to(device)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved


def load_vae(path: str | Path, device: torch.device | str = "cpu") -> VAE:
    model, _ = load_model(path, device)
    if not isinstance(model, VAE):
        raise DataError(f"{path} holds a decoder, not a VAE: re-run its training stage (`dvc repro -f train@<fit>`)")
    return model


def load_decoder(path: str | Path, device: torch.device | str = "cpu") -> tuple[Decoder, torch.Tensor | None]:
    """The decoder of a model file, and the M training draws it kept (None if it kept none)."""
    model, saved = load_model(path, device)
    return (model.decoder if isinstance(model, VAE) else model), saved.get("train_draws")


@dataclass
class FitModel:
    """One fit as the evaluation sees it: its decoder, its own amortised encoder if it has one (a VAE
    around the decoder), the M prior draws it trained on if it kept them, and its hidden width."""

    name: str
    decoder: Decoder
    encoder: VAE | None
    train_draws: torch.Tensor | None
    hidden: int
    trained_on: str = ""  # the device its training stage ran on (cpu, cuda, mps), where the file says


def load_fit(name: str, path: str | Path, device: torch.device | str = "cpu") -> FitModel:
    model, saved = load_model(path, device)
    if isinstance(model, VAE):
        return FitModel(name, model.decoder, model, saved.get("train_draws"), saved["hidden"],
                        saved.get("trained_on", ""))
    return FitModel(name, model, None, saved.get("train_draws"), saved["hidden"], saved.get("trained_on", ""))

