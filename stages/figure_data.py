"""Stage `figure_data@<fit>`: every array of the fit's figures (reconstructions and denoising of the shown
test images, prior samples, the latent interpolation, the t-SNE map of latent means or a 2-d latent's
manifold), computed where the model is loaded; the final stage only draws. Writes
evaluation/<fit>/figure_data/figures.npz."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's latentfit, not an installed one

from latentfit.evaluation.blocks import Block, Part, block_stage
from latentfit.visualize.arrays import fit_figure_data

# the params it reads: its `params` in dvc.yaml (`python -m latentfit.dag` checks), and all it may read
READS = ("visualize.seed", "visualize.n_show", "visualize.search_candidates", "visualize.flip_prob",
         "visualize.interp_from", "visualize.interp_to", "visualize.interp_steps", "visualize.tsne_points",
         "visualize.tsne_perplexity", "visualize.manifold_steps", "visualize.manifold_span", "device")


def compute(b: Block) -> Part:
    return Part({}, {}, arrays=fit_figure_data(b.fit, b.encoder(), b.train, b.test, b.params.visualize))


main = block_stage("figure_data", READS, compute)

if __name__ == "__main__":
    main()
