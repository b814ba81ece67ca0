"""The evaluate stage: both fits on one footing (likelihoods, paired gaps, latent structure, samples),
and the schema of its numbers."""
