"""The fast paths reproduce the notebook's formulation (bench/reference.py) within float tolerance:
same weights, same batches and noise give the same losses and, after Adam steps, the same weights."""

import math
import sys
from pathlib import Path

import torch

from latentfit.fitting.loops import make_optimizer
from latentfit.inference.reconstruct import prior_search
from latentfit.model.likelihood import elbo_terms, mc_marginal_log_prob
from latentfit.model.networks import VAE, Decoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import reference

TOL = {"rtol": 1e-4, "atol": 1e-5}


def batches(n_batches=3, size=32):
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(size, 784, generator=g) > 0.7).float() * torch.rand(size, 784, generator=g)
            for _ in range(n_batches)]


def copy_vae(ref: reference.NotebookVAE) -> VAE:
    vae = VAE()
    with torch.no_grad():
        vae.encoder.fc.load_state_dict(ref.enc1.state_dict())
        vae.encoder.head.weight.copy_(torch.cat([ref.enc_mu.weight, ref.enc_logvar.weight]))
        vae.encoder.head.bias.copy_(torch.cat([ref.enc_mu.bias, ref.enc_logvar.bias]))
        vae.decoder.fc1.load_state_dict(ref.dec1.state_dict())
        vae.decoder.fc2.load_state_dict(ref.dec2.state_dict())
    return vae


def copy_decoder(ref: reference.NotebookDecoder) -> Decoder:
    decoder = Decoder()
    decoder.fc1.load_state_dict(ref.dec1.state_dict())
    decoder.fc2.load_state_dict(ref.dec2.state_dict())
    return decoder


def test_vae_steps_match_the_notebook():
    torch.manual_seed(0)
    ref = reference.NotebookVAE()
    vae = copy_vae(ref)
    ref_opt, opt = torch.optim.Adam(ref.parameters(), lr=1e-3), make_optimizer(vae, 1e-3)
    for step, y in enumerate(batches()):
        torch.manual_seed(step)  # the notebook draws its noise with randn_like from the global RNG
        x_rec, mu, logvar = ref(y)
        ref_loss = (torch.nn.functional.binary_cross_entropy(x_rec, y, reduction="none").sum(1).mean()
                    + (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)).mean())
        noise = torch.randn(len(y), 20, generator=torch.Generator().manual_seed(step))
        rec, kl = elbo_terms(y, *vae(y, noise))
        loss = rec.mean() + kl.mean()
        torch.testing.assert_close(loss, ref_loss, **TOL)
        for o, objective in ((ref_opt, ref_loss), (opt, loss)):
            o.zero_grad()
            objective.backward()
            o.step()
    torch.testing.assert_close(vae.decoder.fc2.weight, ref.dec2.weight, **TOL)
    torch.testing.assert_close(vae.encoder.head.weight[:20], ref.enc_mu.weight, **TOL)


def test_direct_steps_match_the_notebook():
    torch.manual_seed(0)
    ref = reference.NotebookDecoder()
    decoder = copy_decoder(ref)
    ref_opt, opt = torch.optim.Adam(ref.parameters(), lr=1e-3), make_optimizer(decoder, 1e-3)
    z = torch.randn(64, 20)
    for y in batches():
        lp = reference.log_bernoulli_prob_from_logits(y, ref.logits(z))
        ref_loss = -(torch.logsumexp(lp, 1) - math.log(64)).mean()
        loss = -mc_marginal_log_prob(y, decoder(z)).mean()
        torch.testing.assert_close(loss, ref_loss, **TOL)
        for o, objective in ((ref_opt, ref_loss), (opt, loss)):
            o.zero_grad()
            objective.backward()
            o.step()
    torch.testing.assert_close(decoder.fc2.weight, ref.dec2.weight, **TOL)


def test_prior_search_matches_the_notebook():
    torch.manual_seed(0)
    ref = reference.NotebookDecoder()
    decoder = copy_decoder(ref)
    y, z = batches(1, 8)[0], torch.randn(3000, 20)
    torch.testing.assert_close(torch.sigmoid(decoder(prior_search(decoder, y, z, chunk=512))),
                               reference.prior_search(ref, y, z))
