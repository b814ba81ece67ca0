"""Stage `likelihood@<fit>`: an amortised encoder fitted post hoc to the fit's frozen decoder (the direct fit
has none of its own; a VAE's is the control of what such an encoder costs), then the held-out
log-likelihood per test image by prior sampling, IWAE (the fit's own encoder, or the post-hoc one) and AIS
checked by BDMC, and each estimator against its cost. Writes evaluation/<fit>/likelihood/: the post-hoc
encoder (encoder.pt, which the other blocks read), the per-image results, and the importance weights and
AIS path the anatomy reads (state.pt)."""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

from latentfit.evaluation.blocks import Block, Part, block_stage, per_image
from latentfit.evaluation.likelihoods import estimator_curve, fit_posthoc_encoder, likelihoods, test_scores

# the params it reads: its `params` in dvc.yaml (`python -m latentfit.dag` checks), and all it may read
READS = ("evaluate.seed", "evaluate.encoder_epochs", "evaluate.encoder_batch_size", "evaluate.encoder_lr",
         "evaluate.batch_size", "evaluate.prior_mc_samples", "evaluate.prior_mc_curve",
         "evaluate.iwae_samples", "evaluate.iwae_images", "evaluate.iwae_curve", "evaluate.ais_images",
         "evaluate.ais_chains", "evaluate.ais_steps", "evaluate.ais_leapfrog", "evaluate.ais_beta_min",
         "evaluate.ais_batch_size", "evaluate.ais_curve_steps", "evaluate.ais_curve_images", "evaluate.bdmc_images",
         "device")


def compute(b: Block) -> Part:
    p, x = b.params.evaluate, b.test["x"]
    posthoc = fit_posthoc_encoder(b.fit.decoder, b.train["x"], b.fit.hidden, p, b.own("posthoc_encoder"),
                                  lambda record: b.log_epoch(record, "posthoc."))
    lik = likelihoods(b.fit, x, p, posthoc, b.own, b.shared)
    scores, check, columns = test_scores(b.fit, lik, x, p, b.own)
    curve = estimator_curve(b.fit, x[: p.ais_curve_images], lik, p, b.own("ais_curve"))
    state = {"ais": {k: v.cpu() for k, v in dataclasses.asdict(lik.ais).items()},
             **{name: {"ess": s.ess.cpu(), "log_w": s.log_w.cpu() if s.log_w is not None else None}
                for name, s in (("prior", lik.prior), ("iwae", lik.iwae))}}
    return Part({"test": dataclasses.asdict(scores), "bdmc": dataclasses.asdict(check)},
                {"images": per_image(columns, b.test["y"], "test"), "estimators": curve},
                files={"state": state, "encoder": {k: v.cpu() for k, v in posthoc.encoder.state_dict().items()}})


main = block_stage("likelihood", READS, compute)

if __name__ == "__main__":
    main()
