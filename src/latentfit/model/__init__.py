"""The model layer: the networks, the Bernoulli log-likelihood in logits, models/*.pt, the MLflow registry's
models."""
