"""Stage 1: fetch and verify the raw IDX files of `data.dataset` into data/raw/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

from latentfit.config import load_params, to_flat_dict
from latentfit.data import fetch_dataset
from latentfit.runtime import stage_main
from latentfit.tracking import stage_run

RAW = "data/raw"


@stage_main("download")
def main() -> None:
    params = load_params()
    with stage_run("download", to_flat_dict(params), params.tracking.experiment, params.tracking.required):
        for path in fetch_dataset(params.data.dataset, list(params.data.mirrors), RAW, params.data.timeout):
            print(f"verified {path}")


if __name__ == "__main__":
    main()
