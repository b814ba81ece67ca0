"""Training loops: they learn, they stop on divergence, and a resumed run equals an uninterrupted one."""

import pytest
import torch

from latentfit.fitting.checkpoint import Checkpoint
from latentfit.fitting.loops import TrainingError, fit_direct, fit_vae, make_optimizer, vae_objective
from latentfit.model.networks import VAE, Decoder
from tests.synthetic import synthetic_split


@pytest.fixture(scope="module")
def x():
    images, _ = synthetic_split(512, seed=1)
    return torch.from_numpy(images).reshape(len(images), -1).float() / 255


def vae_run(x, epochs, seed=0):
    torch.manual_seed(seed)
    model = VAE(z_dim=4, hidden=32)
    optimizer = make_optimizer(model, 1e-2)
    g = torch.Generator().manual_seed(seed)
    return model, optimizer, g, fit_vae(model, optimizer, x, epochs=epochs, batch_size=64, generator=g)


def test_vae_learns_and_reports_consistent_terms(x):
    *_, records = vae_run(x, epochs=4)
    history = list(records)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["neg_elbo"] < history[0]["neg_elbo"]
    for r in history:  # both terms of the bound are positive (Bernoulli pixels, a KL); the first falls as it learns
        assert r["rec"] > 0 and r["kl"] > 0
    assert history[-1]["rec"] < history[0]["rec"]


@pytest.mark.parametrize("fixed", [True, False])
def test_direct_fit_learns(x, fixed):
    torch.manual_seed(0)
    decoder = Decoder(z_dim=4, hidden=32)
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(16, 4, generator=g) if fixed else None
    history = list(fit_direct(decoder, make_optimizer(decoder, 1e-2), x, epochs=3, batch_size=128,
                              mc_samples=16, generator=g, fixed_draws=draws))
    assert history[-1]["nll"] < history[0]["nll"]


def test_divergence_stops_with_the_epoch_and_a_hint(x):
    bad = x.clone()
    bad[3, 5] = float("nan")
    torch.manual_seed(0)
    model = VAE(z_dim=4, hidden=32)
    records = fit_vae(model, make_optimizer(model, 1e-3), bad, epochs=3, batch_size=64,
                      generator=torch.Generator().manual_seed(0))
    with pytest.raises(TrainingError, match=r"in epoch 1\. .*lower fits\.vae\.lr"):
        next(records)


def test_resume_from_checkpoint_matches_an_uninterrupted_run(x, tmp_path):
    model, _, _, records = vae_run(x, epochs=3)
    uninterrupted = list(records)

    model, optimizer, g, records = vae_run(x, epochs=3)
    ckpt = Checkpoint(tmp_path / "c.pt", {"k": 1}, model, optimizer, g)
    first = next(records)
    ckpt.save([first])
    del records  # the stage dies here

    model, optimizer, g, _ = vae_run(x, epochs=3, seed=123)  # fresh objects, other init
    ckpt = Checkpoint(tmp_path / "c.pt", {"k": 1}, model, optimizer, g)
    history = ckpt.resume()
    assert history == [first]
    history += list(fit_vae(model, optimizer, x, epochs=3, batch_size=64, generator=g, start_epoch=1))
    assert len(history) == len(uninterrupted) == 3
    for got, want in zip(history, uninterrupted, strict=True):
        assert {k: v for k, v in got.items() if k != "seconds"} == {k: v for k, v in want.items() if k != "seconds"}


def test_checkpoint_of_other_params_is_discarded(x, tmp_path):
    model, optimizer, g, records = vae_run(x, epochs=2)
    Checkpoint(tmp_path / "c.pt", {"lr": 1}, model, optimizer, g).save([next(records)])
    stale = Checkpoint(tmp_path / "c.pt", {"lr": 2}, model, optimizer, g)
    assert stale.resume() == []
    assert not (tmp_path / "c.pt").exists()


def test_dynamic_binarisation_trains_on_fresh_binary_draws(x, monkeypatch):
    """Each batch the loss sees is a fresh Bernoulli draw of the grey images: binary, and different per epoch."""
    import latentfit.fitting.loops as training

    seen = []
    real = training.elbo_terms
    monkeypatch.setattr(training, "elbo_terms", lambda y, *rest: (seen.append(y.clone()), real(y, *rest))[1])
    model = VAE(z_dim=4, hidden=32)
    list(fit_vae(model, make_optimizer(model, 1e-3), x[:64], epochs=2, batch_size=64,
                 generator=torch.Generator().manual_seed(0), dynamic=True))
    assert len(seen) == 2 and all(set(y.unique().tolist()) <= {0.0, 1.0} for y in seen)
    assert not torch.equal(seen[0].sum(0), seen[1].sum(0))  # a new draw each epoch (same images, other order)


def test_an_iwae_fit_records_its_bound_beside_the_elbo_and_k_1_is_the_elbo_fit():
    """train_vae.iwae_k > 1 trains the same encoder and decoder on the IWAE bound; its record adds the bound,
    which sits below the ELBO's -ELBO; k = 1 runs the ELBO loop itself, record for record."""
    x = (torch.rand(256, 784, generator=torch.Generator().manual_seed(0)) < 0.3).float()

    def run(k: int) -> list[dict]:
        torch.manual_seed(0)
        model = VAE(4, 32)
        return list(fit_vae(model, make_optimizer(model, 1e-3), x, epochs=2, batch_size=64,
                            generator=torch.Generator().manual_seed(1), iwae_k=k))

    elbo, iwae = run(1), run(8)
    # k = 1 is the plain ELBO fit: the same epochs as the notebook's loop written out here (BCE with logits plus
    # the Gaussian KL in closed form, one reparameterised draw per image, the same draws and batches)
    torch.manual_seed(0)
    model, g = VAE(4, 32), torch.Generator().manual_seed(1)
    optimizer = make_optimizer(model, 1e-3)
    for record in elbo:
        rec_sum = kl_sum = 0.0
        for idx in torch.randperm(len(x), generator=g).split(64):
            y = x[idx]
            mu, logvar = model.encoder(y)
            logits = model.decoder(mu + torch.exp(0.5 * logvar) * torch.randn(len(y), 4, generator=g))
            rec = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(1)
            kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
            optimizer.zero_grad()
            (rec + kl).mean().backward()
            optimizer.step()
            rec_sum, kl_sum = rec_sum + rec.sum().item(), kl_sum + kl.sum().item()
        assert record["rec"] == pytest.approx(rec_sum / len(x), rel=1e-5)
        assert record["kl"] == pytest.approx(kl_sum / len(x), rel=1e-5)
    assert "neg_iwae" not in elbo[0] and all(r["neg_iwae"] < r["neg_elbo"] for r in iwae)
    assert iwae[1]["neg_iwae"] < iwae[0]["neg_iwae"]
    # dvc exp show's train.vae is the objective each trained: the bound for IWAE, not its -ELBO
    assert vae_objective(iwae[-1]) == iwae[-1]["neg_iwae"] and vae_objective(elbo[-1]) == elbo[-1]["neg_elbo"]


def test_a_sample_count_that_cannot_fit_stops_before_training_naming_the_param():
    from latentfit.core.config import parse_params
    from latentfit.core.errors import ParamsError
    from latentfit.fitting.train import check_memory

    params = parse_params({"fits": {"vae": {"kind": "vae", "iwae_k": 100000}, "direct": {"kind": "direct"}}})
    free = 8 * 2**30
    with pytest.raises(ParamsError, match=r"fits.vae.iwae_k = 100000 needs about .* GiB per training step, over half "
                                          r"of the 8.0 GiB free: set fits.vae.iwae_k to (\d+) or less") as err:
        check_memory("vae", params.fits["vae"], params.model, free)
    suggested = int(str(err.value).split("to ")[1].split(" ")[0])
    fitting = parse_params({"fits": {"vae": {"kind": "vae", "iwae_k": suggested}}}).fits["vae"]
    check_memory("vae", fitting, params.model, free)  # the value it names fits ...
    # ... and is the largest that does, worked out by hand: half of 8 GiB over 4 bytes x 128 images x
    # (4 x 784 logit-sized + 3 x 400 hidden + 4 x 20 latent floats) per sample
    assert suggested == 2**32 // (4 * 128 * (4 * 784 + 3 * 400 + 4 * 20)) == 1899
    check_memory("vae", parse_params({}).fits["vae"], params.model, free)  # the defaults fit easily
    check_memory("direct", params.fits["direct"], params.model, free)
    huge_m = parse_params({"fits": {"direct": {"kind": "direct", "mc_samples": 10**8}}}).fits["direct"]
    with pytest.raises(ParamsError, match=r"fits.direct.mc_samples = 100000000 .* set fits.direct.mc_samples to"):
        check_memory("direct", huge_m, params.model, free)
