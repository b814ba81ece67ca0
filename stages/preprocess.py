"""Stage 2: pixels / 255 as float32 N x 784 in [0, 1] plus labels, to data/prepared/ (binarised with
preprocess.binarize)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

from latentfit.core.config import load_params, to_flat_dict
from latentfit.core.io import save_split, write_json
from latentfit.core.runtime import stage_main
from latentfit.core.tracking import stage_run
from latentfit.data.prepare import identity, prepare_split

# the params it reads: its `params` in dvc.yaml (`python -m latentfit.dag` checks), and all it may read
READS = ("data.dataset", "preprocess")

RAW, PREPARED = Path("data/raw"), Path("data/prepared")


@stage_main("preprocess")
def main() -> None:
    params = load_params().reading(READS, "preprocess")
    p, limits = params.preprocess, {"train": params.preprocess.train_limit, "test": params.preprocess.test_limit}
    splits = {}
    with stage_run("preprocess", to_flat_dict(params), params.tracking.experiment, params.tracking.required) as run:
        for split, limit in limits.items():
            data = splits[split] = prepare_split(RAW, split, limit, p.binarize)
            save_split(PREPARED / f"{split}.pt", data)
            run.log_metrics({f"{split}_images": len(data["x"])})
            form = "a fresh binary draw each epoch from grey" if "dynamic" in data else (
                "binary" if params.preprocess.binarize != "none" else "grey")
            print(f"{split}: {tuple(data['x'].shape)} pixels in [0, 1] ({form}), {len(data['y'])} labels")
        # what every result scored: evaluate@<fit> records it, the comparisons pair only equal ones
        write_json(PREPARED / "identity.json", identity(splits, params.data.dataset, p.binarize, limits))


if __name__ == "__main__":
    main()
