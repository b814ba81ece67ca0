"""Stage `evaluate@<fit>`: the fit's anatomy (why one decoder wins: its inference gaps, the exact posterior's
rate and distortion, how far its importance weights can be trusted, a direct fit's mixture) and the
structure of what it learnt (denoising noisy test images, the classes in its latent space, its samples'
Frechet distance), both from its likelihood block; then the fit's results, merged from every part into
metrics/fits/<fit>/: scores.json (every number), images.csv (one row per image), its curves; and the fit's
whole evaluation as one MLflow run (its numbers, its post-hoc encoder's epochs, each part's seconds, where
it ran). `dvc repro evaluate` runs every fit's likelihood block and this."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

from latentfit.core.config import to_flat_dict
from latentfit.core.errors import DataError
from latentfit.core.io import atomic_dir, file_md5, write_json, write_table
from latentfit.core.runtime import stage_main, where
from latentfit.core.tracking import stage_run
from latentfit.evaluation.anatomy import anatomy_part
from latentfit.evaluation.blocks import open_block, part_dir, run_part
from latentfit.evaluation.merge import merge
from latentfit.evaluation.structure import CLASSIFIER, structure_part

# the params it reads: its `params` in dvc.yaml (`python -m latentfit.dag` checks), and all it may read
READS = ("evaluate.seed", "evaluate.anatomy", "evaluate.gap_train_images", "evaluate.gap_steps", "evaluate.gap_samples",
         "evaluate.gap_lr", "evaluate.gap_full_covariance", "evaluate.gap_eval_samples", "evaluate.ais_images",
         "evaluate.ais_chains", "evaluate.ais_steps", "evaluate.ais_leapfrog", "evaluate.ais_beta_min",
         "evaluate.ais_batch_size", "evaluate.prior_mc_samples", "evaluate.iwae_samples",
         "evaluate.denoise_images", "evaluate.flip_probs", "evaluate.search_candidates", "evaluate.knn_neighbours",
         "evaluate.silhouette_points", "evaluate.fid_samples", "device")

EVALUATION, RESULTS, IDENTITY = Path("evaluation"), Path("metrics/fits"), Path("data/prepared/identity.json")


@stage_main("evaluate")
def main() -> None:
    if not IDENTITY.is_file():
        raise DataError(f"{IDENTITY} is missing: run `dvc repro preprocess` (it records what the data are)")
    work, stage = open_block("evaluate", READS)
    fit, params = work.name, work.params
    likelihood = part_dir(fit, "likelihood") / "part.json"
    for path, producer in ((likelihood, f"likelihood@{fit}"), (Path(CLASSIFIER), "reference")):
        if not path.is_file():  # before any work: the anatomy alone takes minutes
            raise DataError(f"{path} is missing: run `dvc repro {producer}` first")
    # the run opens first: an unreachable tracking store with tracking.required stops the stage before any work
    with stage_run(stage, to_flat_dict(params), params.tracking.experiment, params.tracking.required,
                   tags=where(work.device)) as run:
        for part, compute in (("anatomy", anatomy_part), ("structure", structure_part)):
            run_part(work, part, compute)
        merged = merge(EVALUATION, fit, file_md5(f"models/{fit}.pt"), json.loads(IDENTITY.read_text()))
        with atomic_dir(RESULTS / fit) as tmp:  # the fit's results appear together, or not at all
            write_table(tmp / "images.csv", merged.images)
            write_table(tmp / "estimators.csv", merged.estimators)
            write_table(tmp / "rate_distortion.csv", merged.rate_distortion)
            write_json(tmp / "scores.json", merged.scores.to_dict())
        for record in merged.epochs:
            run.log_epoch({k: v for k, v in record.items() if k != "prefix"}, record["prefix"])
        run.log_metrics(merged.scores.to_dict())
        run.log_metrics({f"seconds.{block}": value for block, value in merged.seconds.items()})
    t = merged.scores.test
    print(f"{fit}: AIS NLL {t.ais_nll:.2f} ± {t.ais_nll_se:.2f}, IWAE NLL {t.iwae_nll:.2f}, prior-sampling NLL "
          f"{t.prior_mc_nll:.2f} -> {RESULTS / fit}/")


if __name__ == "__main__":
    main()
