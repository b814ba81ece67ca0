"""Stage 3: fit the VAE by maximising the ELBO (L = 1), or Burda et al.'s IWAE bound with
train_vae.iwae_k > 1 importance samples, resuming from the last completed epoch."""

import sys
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

from latentfit.core.config import load_params, to_flat_dict
from latentfit.core.io import load_split, save_torch, write_json
from latentfit.core.runtime import pick_device, seeded_generator, stage_main, where
from latentfit.core.tracking import stage_run
from latentfit.fitting.checkpoint import Checkpoint, run_epochs
from latentfit.fitting.loops import fit_vae, make_optimizer, vae_objective
from latentfit.model.files import model_file
from latentfit.model.networks import VAE
from latentfit.model.registry import log_training_data, log_vae

# the params it reads: its `params` in dvc.yaml (`python -m latentfit.dag` checks), and all it may read
READS = ("data.dataset", "model", "train_vae", "device")

TRAIN, MODEL = "data/prepared/train.pt", "models/vae.pt"
HISTORY, METRICS, CHECKPOINT = "plots/train_vae.csv", "metrics/train_vae.json", "checkpoints/train_vae.pt"


@stage_main("train_vae")
def main() -> None:
    params = load_params().reading(READS, "train_vae")
    p, flat, device = params.train_vae, to_flat_dict(params), pick_device(params.device)
    generator = seeded_generator(p.seed, device)
    train = load_split(TRAIN)
    x, dynamic = train["x"].to(device), "dynamic" in train  # dynamic: a fresh binary draw of x each epoch
    model = VAE(params.model.z_dim, params.model.hidden).to(device)
    optimizer = make_optimizer(model, p.lr)
    key = {k: v for k, v in flat.items() if k.split(".")[0] in ("data", "preprocess", "model", "train_vae")}
    checkpoint = Checkpoint(CHECKPOINT, key | {"device": str(device)}, model, optimizer, generator)
    history = checkpoint.resume()

    with stage_run("train_vae", flat, params.tracking.experiment, params.tracking.required,
                   tags=where(device)) as run:
        run.call(log_training_data, params.data.dataset)
        records = fit_vae(model, optimizer, x, epochs=p.epochs, batch_size=p.batch_size, generator=generator,
                          start_epoch=len(history), dynamic=dynamic, iwae_k=p.iwae_k)
        history = run_epochs(
            records, history=history, run=run, checkpoint=checkpoint, total=p.epochs, desc="train_vae", csv=HISTORY,
            line=lambda r: f"epoch {r['epoch']:2d}  rec={r['rec']:.2f}  kl={r['kl']:.2f}  -ELBO={r['neg_elbo']:.2f}"
                           + (f"  -IWAE({p.iwae_k})={r['neg_iwae']:.2f}" if "neg_iwae" in r else ""))
        last = history[-1]
        save_torch(MODEL, model_file(model, trained_on=device.type))
        # dvc exp show's column train.vae: the objective it trained (-IWAE with iwae_k > 1, not its -ELBO)
        write_json(METRICS, {"train": {"vae": vae_objective(last)}})
        run.log_metrics({k: last[k] for k in ("rec", "kl", "neg_elbo", "neg_iwae") if k in last}
                        | {"seconds_per_epoch": mean(r["seconds"] for r in history)}, prefix="final.")
        run.log_artifact(HISTORY)
        run.call(log_vae, model, x, MODEL)  # last: it moves the weights to the CPU
    checkpoint.clear()


if __name__ == "__main__":
    main()
