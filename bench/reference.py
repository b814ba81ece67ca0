"""The reference notebook's formulation, written out for the benchmark to measure against.

This is deliberately the notebook's code path: DataLoader over a TensorDataset, sigmoid then
binary_cross_entropy, separate mu/logvar heads, plain Adam, and a B x M x 784 tensor for the
direct fit's likelihood and the prior search. Nothing in the package imports it.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class NotebookVAE(nn.Module):
    def __init__(self, x_dim=784, z_dim=20, h=400):
        super().__init__()
        self.enc1 = nn.Linear(x_dim, h)
        self.enc_mu = nn.Linear(h, z_dim)
        self.enc_logvar = nn.Linear(h, z_dim)
        self.dec1 = nn.Linear(z_dim, h)
        self.dec2 = nn.Linear(h, x_dim)

    def forward(self, x):
        h = F.relu(self.enc1(x))
        mu, logvar = self.enc_mu(h), self.enc_logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return torch.sigmoid(self.dec2(F.relu(self.dec1(z)))), mu, logvar


class NotebookDecoder(nn.Module):
    def __init__(self, x_dim=784, z_dim=20, h=400):
        super().__init__()
        self.z_dim = z_dim
        self.dec1 = nn.Linear(z_dim, h)
        self.dec2 = nn.Linear(h, x_dim)

    def logits(self, z):
        return self.dec2(F.relu(self.dec1(z)))


def log_bernoulli_prob_from_logits(x, logits):
    return -F.binary_cross_entropy_with_logits(
        logits[None].expand(x.shape[0], -1, -1), x[:, None].expand(-1, logits.shape[0], -1), reduction="none"
    ).sum(dim=2)


def vae_epoch(model, opt, x, batch_size=128):
    for (xb,) in DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=True):
        x_rec, mu, logvar = model(xb)
        rec = F.binary_cross_entropy(x_rec, xb, reduction="none").sum(dim=1).mean()
        kl = (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)).mean()
        opt.zero_grad()
        (rec + kl).backward()
        opt.step()
        rec.item(), kl.item()  # the notebook's per-batch host syncs


def direct_epoch(model, opt, x, z_fixed, batch_size=256):
    for (xb,) in DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=True):
        lp = log_bernoulli_prob_from_logits(xb, model.logits(z_fixed))
        nll = -(torch.logsumexp(lp, dim=1) - math.log(z_fixed.shape[0])).mean()
        opt.zero_grad()
        nll.backward()
        opt.step()
        nll.item()


@torch.no_grad()
def prior_search(model, x, z):
    logits = model.logits(z)
    best = log_bernoulli_prob_from_logits(x, logits).argmax(dim=1)
    return torch.sigmoid(logits[best])


@torch.no_grad()
def iwae_nll(model, x, k, batch_size=16):
    """IWAE in the notebook's style: sigmoid then binary_cross_entropy, Normal log-densities from
    torch.distributions, all k draws of a batch at once."""
    out = []
    for xb in x.split(batch_size):
        h = F.relu(model.enc1(xb))
        mu, logvar = model.enc_mu(h), model.enc_logvar(h)
        q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
        z = q.sample((k,))
        probs = torch.sigmoid(model.dec2(F.relu(model.dec1(z))))
        log_lik = -F.binary_cross_entropy(probs, xb.expand(k, -1, -1), reduction="none").sum(-1)
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_w = log_lik + log_prior - q.log_prob(z).sum(-1)
        out.append(-(torch.logsumexp(log_w, 0) - math.log(k)))
    return torch.cat(out).mean()


def ais_nll(model, x, chains, steps, leapfrog, step_size=0.05):
    """AIS as a textbook writes it: a linear path from the prior, log p(y | z) through sigmoid and
    binary_cross_entropy, the gradient by autograd at every leapfrog step, one fixed step size.
    The same number of chains, distributions and leapfrog steps as the project's case."""
    y = x.repeat(chains, 1)
    z = torch.randn(len(y), model.dec1.in_features, device=x.device)

    def log_lik(z):
        probs = torch.sigmoid(model.dec2(F.relu(model.dec1(z))))
        return -F.binary_cross_entropy(probs, y, reduction="none").sum(-1)

    def grad_log_lik(z):
        z = z.detach().requires_grad_(True)
        value = log_lik(z)
        return value.detach(), torch.autograd.grad(value.sum(), z)[0]

    betas = torch.linspace(0, 1, steps + 1).tolist()
    log_w, (ll, grad) = torch.zeros(len(y), device=x.device), grad_log_lik(z)
    for t in range(1, steps + 1):
        log_w += (betas[t] - betas[t - 1]) * ll
        beta = betas[t]
        p0 = torch.randn_like(z)
        zn, p = z, p0 + 0.5 * step_size * (beta * grad - z)
        for i in range(leapfrog):
            zn = zn + step_size * p
            lln, gn = grad_log_lik(zn)
            p = p + (step_size if i < leapfrog - 1 else 0.5 * step_size) * (beta * gn - zn)
        h0 = 0.5 * (p0.pow(2).sum(-1) + z.pow(2).sum(-1)) - beta * ll
        h1 = 0.5 * (p.pow(2).sum(-1) + zn.pow(2).sum(-1)) - beta * lln
        accept = torch.rand(len(y), device=x.device).log() < (h0 - h1)
        z, ll, grad = torch.where(accept[:, None], zn, z), torch.where(accept, lln, ll), torch.where(accept[:, None], gn, grad)
    return -(torch.logsumexp(log_w.view(chains, -1), 0) - math.log(chains)).mean()
