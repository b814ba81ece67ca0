"""Log-likelihood math in log space and logits throughout.

For Bernoulli logits l and data y in [0, 1]:
    y log sigmoid(l) + (1 - y) log(1 - sigmoid(l)) = y * l - softplus(l),
so log p(y_b | z_m) for B images against M latent draws is one matrix product,
Y @ L.T - softplus(L).sum(-1), and never a B x M x 784 tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bernoulli_log_prob(y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(y_i | logits_i) summed over pixels, row by row: (B, D), (B, D) -> (B,)."""
    return (y * logits - F.softplus(logits)).sum(-1)


def pairwise_bernoulli_log_prob(y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(y_b | z_m) for every pair: y (B, D), logits (M, D) -> (B, M)."""
    return y @ logits.T - F.softplus(logits).sum(-1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per row."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def elbo_terms(y: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor):
    """Per-image reconstruction term -log p(y | z) and KL term; -ELBO = rec + kl (L = 1).

    rec is `-bernoulli_log_prob(y, logits)`, computed by torch's fused BCE-with-logits kernel: the
    training step's hot path, where it is one kernel forward and one backward instead of five.
    """
    rec = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(-1)
    return rec, gaussian_kl(mu, logvar)


def mc_marginal_log_prob(y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log (1/M) sum_m p(y | z_m) for logits of M prior draws z_m: (B, D), (M, D) -> (B,)."""
    return torch.logsumexp(pairwise_bernoulli_log_prob(y, logits), dim=1) - math.log(logits.shape[0])


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * math.log(2 * math.pi))


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dimension."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)


def log_importance_weights(y: torch.Tensor, logits: torch.Tensor, z: torch.Tensor, mu: torch.Tensor,
                           logvar: torch.Tensor) -> torch.Tensor:
    """log p(y | z) + log p(z) - log q(z | y) for draws z ~ q; broadcasts over leading sample dims."""
    return bernoulli_log_prob(y, logits) + standard_normal_log_prob(z) - gaussian_log_prob(z, mu, logvar)


def iwae_bound(y: torch.Tensor, logits: torch.Tensor, z: torch.Tensor, mu: torch.Tensor,
               logvar: torch.Tensor) -> torch.Tensor:
    """Burda et al.'s bound log (1/k) sum_i p(y, z_i) / q(z_i | y) per image, for k draws z (k, B, d) from q
    with decoder logits (k, B, D): a lower bound on log p(y) that rises with k; k = 1 is the ELBO."""
    log_w = log_importance_weights(y, logits, z, mu, logvar)
    return torch.logsumexp(log_w, 0) - math.log(len(z))
