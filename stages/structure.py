"""Stage `structure@<fit>`: what is not a likelihood: denoising noisy test images (the direct fit searches
prior draws), the classes in the latent space (kNN, silhouette of the encoder's means), and the prior
samples' Frechet distance to the test images in the reference stage's classifier features. Writes
evaluation/<fit>/structure/."""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

from latentfit.evaluation.blocks import Block, Part, block_stage
from latentfit.evaluation.structure import denoising, latent_structure, sample_fd
from latentfit.fitting.posthoc import load_classifier

# the params it reads: its `params` in dvc.yaml (`python -m latentfit.dag` checks), and all it may read
READS = ("evaluate.seed", "evaluate.denoise_images", "evaluate.flip_probs", "evaluate.search_candidates",
         "evaluate.knn_neighbours", "evaluate.silhouette_points", "evaluate.fid_samples", "device")


def compute(b: Block) -> Part:
    p, x = b.params.evaluate, b.test["x"]
    classifier, reference = load_classifier("models/classifier.pt", b.device)
    denoise = denoising(b.fit, x[: p.denoise_images], list(p.flip_probs), p.search_candidates, b.shared)
    latent = latent_structure(b.encoder(), b.train["x"], b.train["y"], x, b.test["y"], p)
    fd = sample_fd(b.fit.decoder, classifier, reference, min(p.fid_samples, len(x)), b.own("samples"))
    return Part({"denoise": {k: dataclasses.asdict(v) for k, v in denoise.items()},
                 "latent": dataclasses.asdict(latent), "sample_fd": fd}, {})


main = block_stage("structure", READS, compute)

if __name__ == "__main__":
    main()
