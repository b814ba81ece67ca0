"""Stage: what the data alone score, computed once for every fit: the entropy floor of the test images, and
the feature classifier (with the test images' feature statistics) that every fit's prior samples are
compared against by Frechet distance. Depends on the data and its own params, never on a fit."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

from latentfit.core.config import load_params, to_flat_dict
from latentfit.core.io import load_split, save_torch, write_json
from latentfit.core.runtime import pick_device, stage_main, stream, where
from latentfit.core.tracking import stage_run
from latentfit.evaluation.reference import reference
from latentfit.fitting.posthoc import classifier_file

# the params it reads: its `params` in dvc.yaml (`python -m latentfit.dag` checks), and all it may read
READS = ("evaluate.seed", "evaluate.classifier_epochs", "evaluate.classifier_lr", "evaluate.classifier_batch_size",
         "evaluate.fid_samples", "device")

TRAIN, TEST = "data/prepared/train.pt", "data/prepared/test.pt"
CLASSIFIER, METRICS = "models/classifier.pt", "metrics/reference.json"


@stage_main("reference")
def main() -> None:
    params = load_params().reading(READS, "reference")
    device = pick_device(params.device)
    train, test = ({k: v.to(device) for k, v in load_split(path).items()} for path in (TRAIN, TEST))
    with stage_run("reference", to_flat_dict(params), params.tracking.experiment, params.tracking.required,
                   tags=where(device)) as run:
        scores, classifier, stats = reference(train, test, params.evaluate,
                                              stream(params.evaluate.seed, "reference", device=device))
        save_torch(CLASSIFIER, classifier_file(classifier, stats))
        write_json(METRICS, {"reference": scores.to_dict()})
        run.log_metrics(scores.to_dict())
    print(f"entropy floor {scores.entropy_floor:.2f} nats per test image; feature classifier accuracy "
          f"{scores.classifier_accuracy:.3f}; real train vs test Frechet distance {scores.data_fd:.2f}")


if __name__ == "__main__":
    main()
