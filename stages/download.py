"""Stage 1: fetch and verify the raw IDX files of `data.dataset` into data/raw/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

from latentfit.core.config import load_params, to_flat_dict
from latentfit.core.runtime import stage_main
from latentfit.core.tracking import stage_run
from latentfit.data.sources import fetch_dataset

# the params it reads: its `params` in dvc.yaml (`python -m latentfit.dag` checks), and all it may read
READS = ("data",)

RAW = "data/raw"


@stage_main("download")
def main() -> None:
    params = load_params().reading(READS, "download")
    with stage_run("download", to_flat_dict(params), params.tracking.experiment, params.tracking.required):
        data = params.data
        for path, how in fetch_dataset(data.dataset, list(data.mirrors), RAW, data.timeout,
                                       trust=data.verify == "shape"):
            print(f"verified {path} as {data.dataset}'s ({how})")


if __name__ == "__main__":
    main()
