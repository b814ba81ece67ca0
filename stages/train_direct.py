"""Stage 4: fit the same decoder directly, maximising the M-draw MC estimate of log p(y)."""

import sys
from pathlib import Path
from statistics import mean

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

from latentfit.core.config import load_params, to_flat_dict
from latentfit.core.io import load_split, save_torch, write_json
from latentfit.core.runtime import pick_device, seeded_generator, stage_main, where
from latentfit.core.tracking import stage_run
from latentfit.fitting.checkpoint import Checkpoint, run_epochs
from latentfit.fitting.loops import fit_direct, make_optimizer
from latentfit.model.files import model_file
from latentfit.model.networks import Decoder
from latentfit.model.registry import log_direct, log_training_data

# the params it reads: its `params` in dvc.yaml (`python -m latentfit.dag` checks), and all it may read
READS = ("data.dataset", "model", "train_direct", "device")

TRAIN, MODEL = "data/prepared/train.pt", "models/direct.pt"
HISTORY, METRICS, CHECKPOINT = "plots/train_direct.csv", "metrics/train_direct.json", "checkpoints/train_direct.pt"


@stage_main("train_direct")
def main() -> None:
    params = load_params().reading(READS, "train_direct")
    p, flat, device = params.train_direct, to_flat_dict(params), pick_device(params.device)
    generator = seeded_generator(p.seed, device)
    train = load_split(TRAIN)
    x, dynamic = train["x"].to(device), "dynamic" in train  # dynamic: a fresh binary draw of x each epoch
    decoder = Decoder(params.model.z_dim, params.model.hidden).to(device)
    optimizer = make_optimizer(decoder, p.lr)
    draws = (torch.randn(p.mc_samples, params.model.z_dim, generator=generator, device=device)
             if p.fixed_samples else None)
    key = {k: v for k, v in flat.items() if k.split(".")[0] in ("data", "preprocess", "model", "train_direct")}
    checkpoint = Checkpoint(CHECKPOINT, key | {"device": str(device)}, decoder, optimizer, generator)
    history = checkpoint.resume()  # the draws above come first from the seed, so they match too

    with stage_run("train_direct", flat, params.tracking.experiment, params.tracking.required,
                   tags=where(device)) as run:
        run.call(log_training_data, params.data.dataset)
        records = fit_direct(decoder, optimizer, x, epochs=p.epochs, batch_size=p.batch_size,
                             mc_samples=p.mc_samples, generator=generator, fixed_draws=draws,
                             start_epoch=len(history), dynamic=dynamic)
        history = run_epochs(
            records, history=history, run=run, checkpoint=checkpoint, total=p.epochs, desc="train_direct", csv=HISTORY,
            line=lambda r: f"direct epoch {r['epoch']:2d}  MC marginal NLL={r['nll']:.2f}")
        # The training draws are kept: evaluate reports the NLL under exactly these draws.
        save_torch(MODEL, model_file(decoder, train_draws=draws, trained_on=device.type))
        write_json(METRICS, {"train": {"direct": history[-1]["nll"]}})  # dvc exp show's column train.direct
        run.log_metrics({"nll": history[-1]["nll"], "seconds_per_epoch": mean(r["seconds"] for r in history)},
                        prefix="final.")
        run.log_artifact(HISTORY)
        run.call(log_direct, decoder, MODEL)  # last: it moves the weights to the CPU
    checkpoint.clear()


if __name__ == "__main__":
    main()
