"""Stage `anatomy@<fit>`: why one decoder wins, from the fit's likelihood block: its inference gaps (encoder,
best Gaussian, AIS), the exact posterior's rate and distortion along the AIS path, how far its importance
weights can be trusted, and a direct fit's mixture. Empty with evaluate.anatomy: false. Writes
evaluation/<fit>/anatomy/."""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

import pandas as pd

from latentfit.evaluation.anatomy import RD_COLUMNS, anatomy
from latentfit.evaluation.blocks import Block, Part, block_stage, load_state, per_image
from latentfit.evaluation.likelihoods import Likelihoods
from latentfit.inference.ais import AisPath
from latentfit.inference.estimators import Sampled

# the params it reads: its `params` in dvc.yaml (`python -m latentfit.dag` checks), and all it may read
READS = ("evaluate.seed", "evaluate.anatomy", "evaluate.gap_train_images", "evaluate.gap_steps", "evaluate.gap_samples",
         "evaluate.gap_lr", "evaluate.gap_full_covariance", "evaluate.gap_eval_samples", "evaluate.ais_images",
         "evaluate.ais_chains", "evaluate.ais_steps", "evaluate.ais_leapfrog", "evaluate.ais_beta_min",
         "evaluate.ais_batch_size", "evaluate.prior_mc_samples", "evaluate.iwae_samples", "device")


def compute(b: Block) -> Part:
    if not b.params.evaluate.anatomy:
        return Part({}, {"images": per_image({}, b.test["y"][:0], "test"), "rate_distortion": pd.DataFrame(
            columns=RD_COLUMNS)})
    state = load_state(b.name, "likelihood", b.device)
    weights = {name: Sampled({}, state[name]["ess"], state[name]["log_w"]) for name in ("prior", "iwae")}
    lik = Likelihoods(b.encoder(), b.posthoc(), weights["prior"], weights["iwae"], None, AisPath(**state["ais"]), {})
    why, mixture, rd_curve, test_columns, train_columns = anatomy(b.fit, lik, b.train, b.test, b.params.evaluate, b.own)
    images = per_image(test_columns, b.test["y"][: len(next(iter(test_columns.values())))], "test")
    if train_columns:
        n = len(next(iter(train_columns.values())))
        images = pd.concat([images, per_image(train_columns, b.train["y"][:n], "train")], ignore_index=True)
    scores = {"anatomy": dataclasses.asdict(why)} | ({"mixture": dataclasses.asdict(mixture)} if mixture else {})
    return Part(scores, {"images": images, "rate_distortion": pd.DataFrame(rd_curve, columns=RD_COLUMNS)})


main = block_stage("anatomy", READS, compute)

if __name__ == "__main__":
    main()
