"""The evaluate and visualize stages' library code, in-process, on tiny models and synthetic data."""

import dataclasses
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from scipy import stats

from latentfit.config import parse_params
from latentfit.estimators import paired_difference
from latentfit.evaluation.run import evaluate
from latentfit.evaluation.schema import Details
from latentfit.figure_data import curve_figures, model_figures
from latentfit.models import VAE, Decoder
from latentfit.report import render_report
from latentfit.training import fit_direct, fit_vae, make_optimizer
from tests.synthetic import synthetic_split

TINY = {
    "model": {"z_dim": 3, "hidden": 32},
    "evaluate": {"prior_mc_samples": 300, "prior_mc_curve": [10, 100], "iwae_samples": 50, "iwae_images": 40,
                 "iwae_curve": [1, 10], "ais_images": 20, "ais_chains": 3, "ais_steps": 20, "ais_curve_steps": [5],
                 "ais_curve_images": 10, "ais_batch_size": 8, "bdmc_images": 6, "encoder_epochs": 1,
                 "search_candidates": 100, "denoise_images": 20, "silhouette_points": 30, "classifier_epochs": 1,
                 "classifier_lr": 0.003, "classifier_batch_size": 32, "fid_samples": 50},
    "visualize": {"search_candidates": 100, "tsne_points": 40, "n_show": 4},
}


def split(count: int, seed: int) -> dict[str, torch.Tensor]:
    images, labels = synthetic_split(count, seed)
    return {"x": torch.from_numpy(images).reshape(count, -1).float() / 255, "y": torch.from_numpy(labels).long()}


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    params = parse_params(TINY)
    train, test = split(300, 1), split(120, 2)
    g = torch.Generator().manual_seed(0)
    vae, direct = VAE(3, 32), Decoder(3, 32)
    list(fit_vae(vae, make_optimizer(vae, 3e-3), train["x"], epochs=2, batch_size=32, generator=g))
    list(fit_direct(direct, make_optimizer(direct, 3e-3), train["x"], epochs=2, batch_size=32, mc_samples=16,
                    generator=g))
    logged = []
    torch.manual_seed(2)  # module initialisations inside evaluate draw from torch's global generator
    result = evaluate(vae.eval(), direct.eval(), train, test, params.evaluate, hidden=32,
                      generator=torch.Generator().manual_seed(1),
                      train_draws=torch.randn(16, 3, generator=torch.Generator().manual_seed(0)),
                      log=lambda record, prefix: logged.append(prefix))
    return params, vae, direct, train, test, result, logged


def test_evaluate_reports_the_headline_from_its_own_metrics(fitted):
    *_, result, logged = fitted
    d = result.details
    head = d.headline()
    assert set(head) == {"ais", "iwae", "nelbo", "prior"}
    for est, key in (("ais", "ais_nll"), ("iwae", "iwae_nll")):
        assert head[est]["vae"] == getattr(d.vae.test, key) and head[est]["direct"] == getattr(d.direct.test, key)
        # the gap is paired over the same images, so its mean is the difference of the means
        assert head[est]["gap"] == pytest.approx(head[est]["direct"] - head[est]["vae"], rel=1e-5)
    assert (d.gap.ais.images, d.gap.iwae.images, d.gap.prior_mc.images) == (20, 40, 120)
    for check in (d.bdmc.vae, d.bdmc.direct):
        assert check.gap == pytest.approx(check.upper_nll - check.lower_nll)
    assert d.vae.test.iwae_nll <= d.vae.test.neg_elbo + 1.0
    assert d.direct.test.train_draws_nll is not None and d.direct.test.neg_elbo is None
    assert set(logged) == {"posthoc_vae.", "posthoc_direct."}


def test_the_details_file_reads_back_as_the_same_schema(fitted):
    """What evaluate writes (JSON) and what the report, figures and sweep read is one schema."""
    *_, result, _ = fitted
    written = json.loads(json.dumps(result.details.to_dict()))
    assert Details.from_dict(written) == result.details
    assert "neg_elbo" not in written["direct"]["test"], "a number a fit does not have is left out, not null"
    assert set(written["denoise"]) == {"flip_0", "flip_0_01", "flip_0_02", "flip_0_05", "flip_0_1"}


def test_the_schema_reads_back_a_details_file_the_stage_wrote_before_it_existed():
    """tests/data/evaluate_details.json: the evaluate stage's output of a full-size Fashion-MNIST run by the
    release before the schema. The schema reads every number of it and writes the same file."""
    written = json.loads((Path(__file__).parent / "data/evaluate_details.json").read_text())
    details = Details.from_dict(written)
    assert details.to_dict() == written
    assert details.headline()["ais"]["gap"] == written["gap"]["ais"]["mean"]


def test_evaluate_writes_each_estimator_against_its_cost(fitted):
    params, *_, result, _ = fitted
    table = pd.DataFrame(result.estimators)
    p = params.evaluate
    for fit in ("vae", "direct"):
        rows = table[table["fit"] == fit]
        assert sorted(rows[rows.estimator == "prior"]["cost"]) == [10, 100, 300]
        assert sorted(rows[rows.estimator == "iwae"]["cost"]) == [1, 10, 50]
        ais = rows[rows.estimator == "ais"].sort_values("steps")
        assert list(ais["steps"]) == [5, 20]
        assert list(ais["cost"]) == [(p.ais_chains + 2) * s * p.ais_leapfrog for s in (5, 20)]
    assert [row["samples"] for row in result.prior_curve] == [10, 100, 300]
    assert len(result.denoise) == len(p.flip_probs)


def test_report_leads_with_the_verdict(fitted):
    params, *_, result, _ = fitted
    report = render_report(result.details, params)
    first = report.splitlines()[2]
    gap = result.details.gap.ais
    assert first.startswith("**The ") and f"{abs(gap.mean):.2f} nats" in first and "BDMC" in first
    assert "| AIS (3 chains x 20 distributions) |" in report
    for est in ("ais", "iwae", "prior_mc"):  # the verdict table: every estimator on the AIS images
        v = getattr(result.details.verdict, est)
        assert v.images == 20 and v.mean == pytest.approx(v.direct - v.vae, abs=1e-3)
    assert result.details.verdict.ais.mean == pytest.approx(result.details.gap.ais.mean)


def test_the_anatomy_obeys_its_math(fitted):
    """Each q's -ELBO above the next (the optimised start from the encoder's), rate + distortion = AIS NLL,
    the gaps add up to encoder -ELBO minus AIS NLL, every class of the AIS images has its gap."""
    params, *_, test, result, _ = fitted
    a, d = result.details.anatomy, result.details
    assert a is not None and a.mixture is not None
    for fit, ais in ((a.vae, d.vae.test.ais_nll), (a.direct, d.direct.test.ais_nll)):
        for gaps in (fit.test, fit.train):
            assert gaps is not None and gaps.optimised_full is not None and gaps.covariance is not None
            assert gaps.amortised >= gaps.optimised - 0.05 and gaps.optimised >= gaps.optimised_full - 0.05
            total = gaps.amortisation.mean + gaps.covariance.mean + gaps.approximation.mean
            assert total == pytest.approx(gaps.amortised - gaps.ais, abs=1e-3)
        assert fit.test.images == 20 and fit.train is not None and fit.train.images == 100
        assert fit.test.ais == pytest.approx(ais)
        assert fit.posterior.rate + fit.posterior.distortion == pytest.approx(ais, abs=1e-3)
        assert fit.posterior.rate > 0 and 0 <= fit.encoder.active_units <= 3 and len(fit.encoder.kl_per_dim) == 3
        for r, draws in ((fit.prior_sampling, 300), (fit.iwae, 50)):
            assert r.draws == draws and 1 - 1e-6 <= r.ess_min <= r.ess_median <= draws and 0 <= r.flagged <= r.k_images
        assert fit.prior_sampling.k_images == 20 and fit.iwae.k_images == 40
    assert a.mixture.components == 16 and 1 <= a.mixture.used <= 16 and 1 <= a.mixture.perplexity <= 16
    assert set(a.by_class) <= {str(c) for c in test["y"][:20].tolist()} and a.by_class
    rd = pd.DataFrame(result.rate_distortion)
    assert set(rd["fit"]) == {"vae", "direct"} and rd.groupby("fit")["beta"].max().tolist() == [1.0, 1.0]
    report = render_report(d, params)
    assert "## Why the decoders differ" in report and "| VAE | train (100) |" in report


def test_switching_the_anatomy_off_changes_no_other_number(fitted):
    params, vae, direct, train, test, result, _ = fitted
    off = dataclasses.replace(params.evaluate, anatomy=False)
    torch.manual_seed(2)
    again = evaluate(vae, direct, train, test, off, hidden=32, generator=torch.Generator().manual_seed(1),
                     train_draws=torch.randn(16, 3, generator=torch.Generator().manual_seed(0)))
    assert again.details.anatomy is None and again.rate_distortion == []
    drop = {"anatomy", "seconds"}
    assert ({k: v for k, v in again.details.to_dict().items() if k not in drop}
            == {k: v for k, v in result.details.to_dict().items() if k not in drop})


def test_paired_difference_is_a_t_interval_of_the_differences():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, generator=g) * 10 + 250
    b = a - 5 + torch.randn(30, generator=g)  # a hard image is hard for both: the pairing removes that spread
    out = paired_difference(a, b)
    d = (a - b).double().numpy()
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert out.mean == pytest.approx(d.mean()) and out.se == pytest.approx(stats.sem(d))
    assert (out.lo, out.hi) == pytest.approx((lo, hi))
    assert out.se < (a.std() / math.sqrt(30)).item() / 5


def test_visualize_draws_every_figure(fitted):
    params, vae, direct, train, test, result, _ = fitted
    figs = model_figures(vae, direct, train, test, params.visualize, torch.Generator().manual_seed(0))
    histories = {"vae": pd.DataFrame({"epoch": [1, 2], "rec": [3.0, 2.0], "kl": [1.0, 1.0], "neg_elbo": [4.0, 3.0]}),
                 "direct": pd.DataFrame({"epoch": [1, 2], "nll": [5.0, 4.0]})}
    curves = {"prior_mc": pd.DataFrame(result.prior_curve), "denoise": pd.DataFrame(result.denoise),
              "estimators": pd.DataFrame(result.estimators), "rate_distortion": pd.DataFrame(result.rate_distortion)}
    figs |= curve_figures(histories, curves, result.details)
    assert set(figs) == {"raw_image", "reconstruction", "prior_samples", "interpolation",
                         "interpolation_latent_vs_pixel", "vae_denoising", "tsne_vae", "samples_vae_vs_direct",
                         "search_reconstruction", "training_curves", "prior_mc_curve", "denoise_sweep",
                         "estimator_convergence", "gap_walk", "rate_distortion"}
    convergence = figs["estimator_convergence"]
    assert len(convergence.axes) == 2 and all(len(ax.lines) == 3 for ax in convergence.axes)
    for fig in figs.values():
        plt.close(fig)
