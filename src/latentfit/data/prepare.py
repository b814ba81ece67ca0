"""Preprocessing (the preprocess stage's library): raw IDX files to the prepared tensors."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentfit.core.errors import DataError
from latentfit.data.idx import SPLITS, read_idx

BINARIZE_SEED = 0  # the one Bernoulli draw of the test images under dynamic binarisation


def prepare_split(raw_dir: str | Path, split: str, limit: int = 0, binarize: str = "none") -> dict[str, torch.Tensor]:
    """Pixels / 255 as float32 N x 784 in [0, 1], plus int64 labels; the first `limit` items if limit > 0.

    `binarize`: "static" thresholds every image at 0.5; "dynamic" keeps the grey training images,
    flagged `dynamic` so that training draws a fresh Bernoulli image from them each epoch, and
    binarises the test images once by a Bernoulli draw from a fixed seed (as the literature does)."""
    images_name, labels_name, _ = SPLITS[split]
    raw_dir = Path(raw_dir)
    for name in (images_name, labels_name):
        if not (raw_dir / name).is_file():
            raise DataError(f"{raw_dir / name} is missing: run the download stage first (`dvc repro download`)")
    images = torch.from_numpy(read_idx(raw_dir / images_name).copy())
    labels = torch.from_numpy(read_idx(raw_dir / labels_name).astype(np.int64))
    if len(images) != len(labels):
        raise DataError(f"{split}: {len(images)} images but {len(labels)} labels; re-run `dvc repro -f download`")
    if limit:
        images, labels = images[:limit], labels[:limit]
    x = images.reshape(len(images), -1).float().div_(255.0)
    if binarize == "static":
        return {"x": (x > 0.5).float(), "y": labels}
    if binarize == "dynamic" and split == "train":
        return {"x": x, "y": labels, "dynamic": torch.tensor(True)}
    if binarize == "dynamic":
        return {"x": torch.bernoulli(x, generator=torch.Generator().manual_seed(BINARIZE_SEED)), "y": labels}
    return {"x": x, "y": labels}


def identity(splits: dict[str, dict[str, torch.Tensor]], dataset: str, binarize: str, limits: dict[str, int]) -> dict[str, Any]:
    """What the prepared data are, for every result computed from them (data/prepared/identity.json): the
    dataset, the preprocessing, and a SHA-256 of each split's pixels and labels, so two results pair only when
    they scored the very same bytes (a grey and a binarised run share image ids and labels, not pixels)."""
    out: dict[str, Any] = {"dataset": dataset, "binarize": binarize}
    for name, split in splits.items():
        digest = hashlib.sha256(split["x"].numpy().tobytes())
        digest.update(split["y"].numpy().tobytes())
        out |= {f"{name}_limit": limits[name], f"{name}_images": len(split["x"]), f"{name}_sha256": digest.hexdigest()}
    return out
