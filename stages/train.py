"""Stage `train@<fit>` (`python stages/train.py FIT`): one fit of params.yaml's `fits`, by its kind, resuming
from the last completed epoch. A `vae` fit maximises the ELBO (L = 1), or Burda et al.'s IWAE bound with
iwae_k > 1; a `direct` fit maximises the M-draw Monte Carlo estimate of log p(y) with the decoder alone."""

import sys
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

from latentfit.core.config import load_params, to_flat_dict
from latentfit.core.io import load_split, save_torch, write_json
from latentfit.core.runtime import fit_argument, pick_device, seeded_generator, stage_main, where
from latentfit.core.tracking import stage_run
from latentfit.fitting.checkpoint import Checkpoint, run_epochs
from latentfit.fitting.train import check_memory, free_memory, train_direct, train_vae

# the params it reads: its `params` in dvc.yaml (`python -m latentfit.dag` checks), and all it may read
READS = ("data.dataset", "model", "fits.${key}", "device")

TRAINERS = {"vae": train_vae, "direct": train_direct}  # by the fit's kind


@stage_main("train")
def main() -> None:
    full = load_params()
    fit, stage = fit_argument("train", full.fits)
    params = full.reading(tuple(r.replace("${key}", fit) for r in READS), stage)
    p, flat, device = params.fits[fit], to_flat_dict(params), pick_device(params.device)
    check_memory(fit, p, params.model, free_memory(device))  # before anything is loaded or trained
    model_path, history_csv = f"models/{fit}.pt", f"plots/train/{fit}.csv"
    generator = seeded_generator(p.seed, device)
    train = load_split("data/prepared/train.pt")
    x, dynamic = train["x"].to(device), "dynamic" in train  # dynamic: a fresh binary draw of x each epoch
    trainer = TRAINERS[p.kind](fit, p, params.model, x, generator, dynamic)
    # the checkpoint is of this fit, these params and this data: any change starts over
    key = {k: v for k, v in flat.items() if k.split(".")[0] in ("data", "preprocess", "model")}
    key |= {k: v for k, v in flat.items() if k.startswith(f"fits.{fit}.")} | {"device": str(device)}
    checkpoint = Checkpoint(f"checkpoints/{fit}.pt", key, trainer.model, trainer.optimizer, generator)
    history = checkpoint.resume()

    with stage_run(stage, flat, params.tracking.experiment, params.tracking.required, tags=where(device)) as run:
        run.call(trainer.log_data, params.data.dataset)
        history = run_epochs(trainer.epochs(len(history)), history=history, run=run, checkpoint=checkpoint,
                             total=p.epochs, desc=stage, csv=history_csv, line=trainer.line)
        save_torch(model_path, trainer.model_file(device))
        final = trainer.objective(history[-1])  # `train.vae` (its -ELBO), `train.vae_iwae_k8`, `train.direct`
        write_json(f"metrics/train/{fit}.json", {"train": final})  # dvc exp show's columns
        seconds = mean(r["seconds"] for r in history)
        run.log_metrics(trainer.terms(history[-1]) | {"seconds_per_epoch": seconds}, prefix="final.")
        run.log_artifact(history_csv)
        run.call(trainer.register, model_path)  # last: it moves the weights to the CPU
    checkpoint.clear()


if __name__ == "__main__":
    main()
