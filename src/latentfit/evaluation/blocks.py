"""One fit's evaluation, split where its params split, each part in its own stage: `likelihood@<fit>` (the
held-out likelihoods, with the post-hoc encoder and the AIS path the others read), `evaluate@<fit>` (the
anatomy and the latent structure, computed there, then every part merged into the fit's results by
evaluation/merge.py) and `figure_data@<fit>` (visualize params only). Each stage reads the params it needs
key by key and writes each part to `evaluation/<fit>/<part>/` (`part.json` with its share of the fit's
numbers, and per-image rows, curves or tensors beside it). So a t-SNE tweak re-draws figures, an anatomy
param re-runs the anatomy, and no likelihood is computed again for either. Three stages per fit, not one
per part: each stage start costs its process (torch's import, the data), bench/results-stage-start-cpu.md.

Every part draws from its own streams, derived from `evaluate.seed`, the fit's name and the stream's
name (runtime.stream), the same names as when the parts ran in one process: splitting moved no number.
Only `evaluate@<fit>` opens an MLflow run: the other parts' numbers, per-epoch records and timing go into
their part.json, and it logs the fit's whole evaluation as one run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from latentfit.core.config import Params, load_params
from latentfit.core.errors import DataError
from latentfit.core.io import atomic_dir, load_split, write_json, write_table
from latentfit.core.runtime import fit_argument, pick_device, seeded_generator, share_cpus, stage_main, stream, where
from latentfit.model.files import FitModel, load_fit
from latentfit.model.networks import VAE

EVALUATION = Path("evaluation")  # evaluation/<fit>/<block>/: each block's part
TRAIN, TEST = "data/prepared/train.pt", "data/prepared/test.pt"
TRAIN_DRAW_SEED = 0  # the one binary draw of dynamically binarised training images that the evaluation scores


def part_dir(fit: str, block: str) -> Path:
    return EVALUATION / fit / block


@dataclass
class Block:
    """What a block's compute function gets: the fit, the data on the device, its params view, its streams."""

    name: str  # the fit's name
    fit: FitModel
    train: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]
    params: Params  # the view of the params this block declared (READS)
    epochs: list[dict[str, Any]] = field(default_factory=list)  # per-epoch records, logged by evaluate@<fit>
    _posthoc: VAE | None = field(default=None, repr=False)  # loaded once, whichever of encoder()/posthoc() asks

    def log_epoch(self, record: dict[str, Any], prefix: str = "") -> None:
        self.epochs.append({"prefix": prefix, **record})

    @property
    def device(self) -> torch.device:
        return self.test["x"].device

    def own(self, block: str) -> torch.Generator:
        """This fit's stream of a named block of draws."""
        return stream(self.params.evaluate.seed, self.name, block, device=self.device)

    def shared(self, block: str) -> torch.Generator:
        """A stream every fit shares: common random numbers (the same noisy images, the same prior draws)."""
        return stream(self.params.evaluate.seed, block, device=self.device)

    def encoder(self) -> VAE:
        """The encoder the fit's IWAE, structure and figures use: its own, or the post-hoc one."""
        return self.fit.encoder if self.fit.encoder is not None else self.posthoc()

    def posthoc(self) -> VAE:
        if self._posthoc is None:
            self._posthoc = load_encoder(part_dir(self.name, "likelihood") / "encoder.pt", self.fit)
        return self._posthoc


@dataclass
class Part:
    """A block's output: its numbers (merged into the fit's scores.json), and files beside them."""

    scores: dict[str, Any]
    tables: dict[str, pd.DataFrame | list[dict[str, Any]]]  # name -> rows, written as <name>.csv
    files: dict[str, Any] = field(default_factory=dict)  # name -> tensors, written as <name>.pt for a later block
    arrays: dict[str, np.ndarray] | None = None  # figures.npz


def load_data(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    train, test = ({k: v.to(device) for k, v in load_split(path).items()} for path in (TRAIN, TEST))
    if train.pop("dynamic", None) is not None:  # dynamically binarised: score one fixed binary draw of it
        train["x"] = torch.bernoulli(train["x"], generator=seeded_generator(TRAIN_DRAW_SEED, device))
    return train, test


def load_encoder(path: Path, fit: FitModel) -> VAE:
    """The post-hoc encoder likelihood@<fit> fitted to this fit's frozen decoder."""
    from latentfit.fitting.posthoc import posthoc_encoder

    if not path.is_file():
        raise DataError(f"{path} is missing: run `dvc repro likelihood@{fit.name}` first")
    model = posthoc_encoder(fit.decoder, fit.hidden)
    model.encoder.load_state_dict(torch.load(path, map_location=fit.decoder.fc1.weight.device, weights_only=True))
    return model.eval()


def load_state(fit: str, block: str, device: torch.device) -> dict[str, Any]:
    path = part_dir(fit, block) / "state.pt"
    if not path.is_file():
        raise DataError(f"{path} is missing: run `dvc repro {block}@{fit}` first")
    return torch.load(path, map_location=device, weights_only=True)


def per_image(columns: dict[str, torch.Tensor], labels: torch.Tensor, split: str) -> pd.DataFrame:
    """One row per image of `split` (NaN where a column's estimator did not reach the image)."""
    n = len(labels)
    frame = pd.DataFrame({"split": split, "image": np.arange(n), "label": labels.cpu().numpy()})
    for name, values in columns.items():
        column = np.full(n, np.nan)
        column[: len(values)] = values.detach().cpu().numpy().astype(np.float64)
        frame[name] = column
    return frame


def write_part(out: Path, part: Part, seconds: float, ran_on: dict[str, str],
               epochs: list[dict[str, Any]] | None = None) -> None:
    """The block's files, all at once (a directory renamed into place)."""
    with atomic_dir(out) as tmp:
        for name, rows in part.tables.items():
            write_table(tmp / f"{name}.csv", rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows))
        for name, tensors in part.files.items():
            torch.save(tensors, tmp / f"{name}.pt")
        if part.arrays is not None:
            np.savez_compressed(tmp / "figures.npz", **part.arrays)  # type: ignore[arg-type]  # numpy's stubs
        write_json(tmp / "part.json", {"scores": part.scores, "seconds": seconds, "ran_on": ran_on,
                                       "epochs": epochs or []})


def open_block(block: str, reads: tuple[str, ...]) -> tuple[Block, str]:
    """Stage `<block>@<fit>`'s work: its fit (from the command line), the params it declared, the data and
    model on the device; and the stage's name."""
    full = load_params()
    name, stage = fit_argument(block, full.fits)
    params = full.reading(reads, stage)
    device = pick_device(params.device)
    train, test = load_data(device)
    return Block(name, load_fit(name, Path(f"models/{name}.pt"), device), train, test, params), stage


def run_part(work: Block, block: str, compute: Callable[[Block], Part]) -> float:
    """`compute` on `work`, its part written to evaluation/<fit>/<block>/ (atomically); its seconds."""
    start, work.epochs = time.perf_counter(), []
    part = compute(work)
    share_cpus()
    seconds = time.perf_counter() - start
    write_part(part_dir(work.name, block), part, seconds, where(work.device) | {"trained_on": work.fit.trained_on},
               work.epochs)
    return seconds


def block_stage(block: str, reads: tuple[str, ...], compute: Callable[[Block], Part]) -> Callable[[], None]:
    """The main() of stage `<block>@<fit>`: params, data and model in, `compute`, the part out."""

    @stage_main(block)
    def main() -> None:
        work, stage = open_block(block, reads)
        seconds = run_part(work, block, compute)
        print(f"{stage}: {seconds:.1f} s -> {part_dir(work.name, block)}/")

    return main
