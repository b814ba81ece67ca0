"""The per-fit evaluation and the final stage's comparison and figures, in-process, on tiny models and
synthetic data."""

import dataclasses
import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from latentfit.core.config import parse_params
from latentfit.core.runtime import stream
from latentfit.core.stats import paired_difference
from latentfit.evaluation.compare import compare, denoise_table, prior_curve
from latentfit.evaluation.reference import reference
from latentfit.evaluation.schema import Details, FitScores
from latentfit.fitting.loops import fit_direct, fit_vae, make_optimizer
from latentfit.inference.ais import Schedule
from latentfit.model.files import FitModel
from latentfit.model.networks import VAE, Decoder
from latentfit.visualize import panels
from latentfit.visualize.panels import Inputs, draw, expected
from latentfit.visualize.report import render_report
from tests.blocks import evaluate_fit
from tests.synthetic import synthetic_split

TINY = {
    "model": {"z_dim": 3, "hidden": 32},
    "evaluate": {"prior_mc_samples": 300, "prior_mc_curve": [10, 100], "iwae_samples": 50, "iwae_images": 40,
                 "iwae_curve": [1, 10], "ais_images": 20, "ais_chains": 3, "ais_steps": 20, "ais_curve_steps": [5],
                 "ais_curve_images": 10, "ais_batch_size": 8, "bdmc_images": 6, "encoder_epochs": 1,
                 "search_candidates": 100, "denoise_images": 20, "silhouette_points": 30, "classifier_epochs": 1,
                 "classifier_lr": 0.003, "classifier_batch_size": 32, "fid_samples": 50, "gap_steps": 30},
    "visualize": {"search_candidates": 100, "tsne_points": 40, "n_show": 4},
}


def split(count: int, seed: int) -> dict[str, torch.Tensor]:
    images, labels = synthetic_split(count, seed)
    return {"x": torch.from_numpy(images).reshape(count, -1).float() / 255, "y": torch.from_numpy(labels).long()}


def trained_fits() -> dict[str, FitModel]:
    """Three fits: a VAE, a direct fit that kept its draws, and a second VAE (the third fit any list may grow)."""
    torch.manual_seed(0)
    train = split(300, 1)["x"]
    g = torch.Generator().manual_seed(0)
    vae, direct, other = VAE(3, 32), Decoder(3, 32), VAE(3, 32)
    draws = torch.randn(16, 3, generator=g)
    list(fit_vae(vae, make_optimizer(vae, 3e-3), train, epochs=2, batch_size=32, generator=g))
    list(fit_direct(direct, make_optimizer(direct, 3e-3), train, epochs=2, batch_size=32, mc_samples=16, generator=g,
                    fixed_draws=draws))
    list(fit_vae(other, make_optimizer(other, 3e-3), train, epochs=2, batch_size=32, generator=g, iwae_k=4))
    return {"vae": FitModel("vae", vae.decoder, vae.eval(), None, 32),
            "direct": FitModel("direct", direct.eval(), None, draws, 32),
            "iwae4": FitModel("iwae4", other.decoder, other.eval(), None, 32)}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    params = parse_params(TINY)
    train, test = split(300, 1), split(120, 2)
    fits = trained_fits()
    ref, classifier, ref_stats = reference(train, test, params.evaluate, stream(0, "reference"))
    logged: list[str] = []
    work = tmp_path_factory.mktemp("evaluation")
    results = {name: evaluate_fit(fit, train, test, params, work, classifier=classifier, reference=ref_stats,
                                  logged=logged) for name, fit in fits.items()}
    arrays = {name: results[name].arrays for name in fits}
    return params, fits, train, test, ref, (classifier, ref_stats), results, arrays, logged


def comparison(evaluated, names=("vae", "direct")) -> Details:
    params, *_, ref, _, results, _, _ = evaluated
    return compare({n: results[n].scores for n in names}, {n: results[n].images for n in names}, ref, params.evaluate)


def test_a_fit_is_evaluated_on_its_own_and_the_headline_reads_its_numbers(evaluated):
    *_, results, _, logged = evaluated
    d = comparison(evaluated)
    head = d.headline()
    for est, key in (("ais", "ais_nll"), ("iwae", "iwae_nll")):
        assert head[est]["vae"] == getattr(d.fits["vae"].test, key)
        assert head[est]["direct"] == getattr(d.fits["direct"].test, key)
        # the gap is paired over the same images, so its mean is the difference of the means
        assert head[est]["gap"] == pytest.approx(head[est]["direct"] - head[est]["vae"], rel=1e-5)
    gaps = d.pairs["direct"].gap
    assert (gaps.ais.images, gaps.iwae.images, gaps.prior_mc.images) == (20, 40, 120)
    for s in d.fits.values():  # two bounds on the NLL of the same simulated images, upper above lower
        assert s.bdmc.upper_nll > s.bdmc.lower_nll - 3 * s.bdmc.gap_se
    vae, direct = d.fits["vae"].test, d.fits["direct"].test
    assert vae.iwae_nll <= vae.neg_elbo + 1.0 and vae.rec > 0 and vae.kl > 0
    assert direct.train_draws_nll is not None and direct.neg_elbo is None and direct.iwae_nll_posthoc is None
    assert vae.iwae_nll_posthoc is not None and set(logged) == {"posthoc."}
    images = results["vae"].images
    test = images[images.split == "test"]
    assert len(test) == 120 and test["ais"].notna().sum() == 20 and test["iwae_50"].notna().sum() == 40
    assert test["ais"].mean() == pytest.approx(vae.ais_nll)  # the per-image results are the numbers' own


def test_the_files_read_back_as_the_same_schema(evaluated, tmp_path):
    """What evaluate@<fit> and the final stage write (JSON, CSV) reads back bit for bit."""
    *_, results, _, _ = evaluated
    d = comparison(evaluated)
    assert Details.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    for result in results.values():
        written = json.loads(json.dumps(result.scores.to_dict()))
        assert FitScores.from_dict(written) == result.scores
        path = tmp_path / "images.csv"
        result.images.to_csv(path, index=False)
        pd.testing.assert_frame_equal(pd.read_csv(path), result.images, check_exact=True)
    assert "neg_elbo" not in d.to_dict()["fits"]["direct"]["test"], "a number a fit lacks is left out, not null"
    assert set(d.fits["vae"].denoise) == {"flip_0", "flip_0_01", "flip_0_02", "flip_0_05", "flip_0_1"}


def test_each_estimator_against_its_cost(evaluated):
    params, *_, results, _, _ = evaluated
    p = params.evaluate
    for name in ("vae", "direct"):
        rows = pd.DataFrame(results[name].estimators)
        assert set(rows["fit"]) == {name}
        assert sorted(rows[rows.estimator == "prior"]["cost"]) == [10, 100, 300]
        assert sorted(rows[rows.estimator == "iwae"]["cost"]) == [1, 10, 50]
        ais = rows[rows.estimator == "ais"].sort_values("steps")
        assert list(ais["steps"]) == [5, 20]
        assert list(ais["cost"]) == [Schedule(steps=s, leapfrog=p.ais_leapfrog).likelihood_evaluations(p.ais_chains)
                                     for s in (5, 20)]  # counted against the real passes in test_estimators
    curve = prior_curve({n: results[n].images for n in ("vae", "direct")})
    assert list(curve["samples"]) == [10, 100, 300] and set(curve.columns) == {"samples", "vae", "direct"}


def test_report_leads_with_the_verdict(evaluated):
    params, *_ = evaluated
    d = comparison(evaluated)
    report = render_report(d, params)
    first = report.splitlines()[2]
    gap = d.pairs["direct"].gap.ais
    assert first.startswith("**The ") and f"{abs(gap.mean):.2f} nats" in first and "BDMC" in first
    assert "| AIS (3 chains x 20 distributions) " in report
    for est in ("ais", "iwae", "prior_mc"):  # the verdict table: every estimator on the AIS images
        v = getattr(d.pairs["direct"].verdict, est)
        assert v.images == 20 and v.mean == pytest.approx(v.fit - v.baseline, abs=1e-3)
    verdict = d.pairs["direct"].verdict.ais  # the AIS images are the verdict's: each side is that fit's own AIS NLL
    assert (verdict.fit, verdict.baseline) == (pytest.approx(d.fits["direct"].test.ais_nll),
                                               pytest.approx(d.fits["vae"].test.ais_nll))


def test_the_anatomy_obeys_its_math(evaluated):
    """Each q's -ELBO above the next (the optimised start from the encoder's), a positive rate and distortion,
    every class of the AIS images has its gap."""
    params, _, _, test, *_ = evaluated
    d = comparison(evaluated)
    for s in d.fits.values():
        a = s.anatomy
        assert a is not None
        for gaps in (a.test, a.train):
            assert gaps is not None and gaps.optimised_full is not None and gaps.covariance is not None
            assert gaps.amortised >= gaps.optimised - 0.05 and gaps.optimised >= gaps.optimised_full - 0.05
        assert a.test.images == 20 and a.train is not None and a.train.images == 100
        assert a.test.ais == pytest.approx(s.test.ais_nll)
        assert a.posterior.distortion > 0 and a.posterior.rate > 0 and 0 <= a.encoder.active_units <= 3 and len(a.encoder.kl_per_dim) == 3
        for r, draws in ((a.prior_sampling, 300), (a.iwae, 50)):
            assert r.draws == draws and 1 - 1e-6 <= r.ess_min <= r.ess_median <= draws and 0 <= r.flagged <= r.k_images
        assert a.prior_sampling.k_images == 20 and a.iwae.k_images == 40
    mixture = d.fits["direct"].mixture
    assert d.fits["vae"].mixture is None and mixture is not None
    assert mixture.components == 16 and 1 <= mixture.used <= 16 and 1 <= mixture.perplexity <= 16
    by_class = d.pairs["direct"].by_class
    assert by_class and set(by_class) <= {str(c) for c in test["y"][:20].tolist()}
    report = render_report(d, params)
    assert "## Why the decoders differ" in report and "| VAE        | train (100) |" in report


def _numbers(result) -> dict:
    drop = {"anatomy", "mixture", "seconds"}
    return {k: v for k, v in result.scores.to_dict().items() if k not in drop}


def test_switching_the_anatomy_off_changes_no_other_number(evaluated, tmp_path):
    params, fits, train, test, _, (classifier, ref_stats), results, _, _ = evaluated
    off = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, anatomy=False))
    torch.manual_seed(123)  # whatever ran before: each block seeds its own stream
    again = evaluate_fit(fits["direct"], train, test, off, tmp_path, classifier=classifier, reference=ref_stats)
    assert again.scores.anatomy is None and again.rate_distortion == []
    assert _numbers(again) == _numbers(results["direct"])
    columns = [c for c in again.images.columns if c in results["direct"].images.columns]
    pd.testing.assert_frame_equal(again.images, results["direct"].images[results["direct"].images.split == "test"]
                                  [columns].reset_index(drop=True), check_exact=True)


def test_a_fit_s_numbers_do_not_move_when_another_fit_is_added_or_removed(evaluated, tmp_path):
    """Bit-identical: the VAE evaluated alone, after another fit, and in a comparison of two or three fits."""
    params, fits, train, test, ref, (classifier, ref_stats), results, _, _ = evaluated
    alone = evaluate_fit(fits["vae"], train, test, params, tmp_path, classifier=classifier, reference=ref_stats)
    assert _numbers(alone) == _numbers(results["vae"])
    pd.testing.assert_frame_equal(alone.images, results["vae"].images, check_exact=True)
    two, three = comparison(evaluated), comparison(evaluated, ("vae", "direct", "iwae4"))
    assert two.fits["vae"] == three.fits["vae"] and two.pairs["direct"] == three.pairs["direct"]
    head2, head3 = two.headline(), three.headline()
    for key, values in head2.items():
        assert ({k: head3[key][k] for k in values} if isinstance(values, dict) else head3[key]) == values
    assert head3["ais"]["gap_iwae4"] == three.pairs["iwae4"].gap.ais.mean


def test_three_fits_in_every_table_and_figure(evaluated):
    params, *_, results, arrays, _ = evaluated
    names = ("vae", "direct", "iwae4")
    d = comparison(evaluated, names)
    assert set(d.fits) == set(names) and set(d.pairs) == {"direct", "iwae4"}
    report = render_report(d, params)
    tables = [block for block in report.split("\n\n") if block.startswith("|")]
    assert len(tables) >= 6
    for block in tables:
        header = block.splitlines()[0]
        if "decoder" in header or "estimate " in header:  # one row per fit (and part)
            body = "\n".join(block.splitlines()[2:])
            assert all(label in body for label in ("VAE", "direct fit", "iwae4")), block
        else:  # one column per fit
            assert all(label in header for label in ("VAE", "direct fit", "iwae4")), block
    assert "iwae4 - VAE" in report
    histories = {n: pd.DataFrame({"epoch": [1, 2], "rec": [3.0, 2.0], "kl": [1.0, 1.0], "neg_elbo": [4.0, 3.0]})
                 for n in names}
    figs = draw(figure_inputs(evaluated, d, histories, []))
    rows = {"reconstruction": 1 + 2 * 3, "prior_samples": 3, "samples_same_z": 3, "interpolation": 3,
            "interpolation_latent_vs_pixel": 4, "denoising": 2 + 3}
    for name, count in rows.items():
        assert len(figs[name].axes) == count, name
    assert [ax.get_title() for ax in figs["tsne"].axes if ax.get_label() != "<colorbar>"] == ["VAE", "direct fit", "iwae4"]
    assert len(figs["training_curves"].axes) == 3 and len(figs["estimator_convergence"].axes) == 3
    for name in ("prior_mc_curve", "rate_distortion"):
        assert len({line.get_color() for line in figs[name].axes[0].lines}) == 3, name
    assert all(len(ax.lines) == 3 for ax in figs["denoise_sweep"].axes)
    for fig in figs.values():
        plt.close(fig)


def figure_inputs(evaluated, d: Details, histories: dict, classes: list[str]) -> Inputs:
    params, *_, results, arrays, _ = evaluated
    names = list(d.fits)
    curves = {"prior_mc": prior_curve({n: results[n].images for n in names}), "denoise": denoise_table(d.fits),
              "estimators": pd.DataFrame([r for n in names for r in results[n].estimators]),
              "rate_distortion": pd.DataFrame([r for n in names for r in results[n].rate_distortion])}
    return Inputs({n: arrays[n] for n in names}, histories, curves, d, params.visualize, classes)


HISTORIES = {"vae": pd.DataFrame({"epoch": [1, 2], "rec": [3.0, 2.0], "kl": [1.0, 1.0], "neg_elbo": [4.0, 3.0]}),
             "direct": pd.DataFrame({"epoch": [1, 2], "nll": [5.0, 4.0]})}


def test_visualize_draws_every_figure(evaluated):
    d = comparison(evaluated)
    figs = draw(figure_inputs(evaluated, d, HISTORIES, [str(c) for c in range(10)]))
    assert set(figs) == expected(z_dim=3) and "tsne" in figs and "latent_manifold" not in figs
    convergence = figs["estimator_convergence"]
    assert len(convergence.axes) == 2 and all(len(ax.lines) == 3 for ax in convergence.axes)
    for fig in figs.values():
        plt.close(fig)


def test_the_shared_images_are_the_same_in_every_fit_s_figure_data(evaluated):
    *_, arrays, _ = evaluated
    for key in ("shown", "noisy", "interpolation_pixel", "latent_labels"):
        np.testing.assert_array_equal(arrays["vae"][key], arrays["direct"][key])
    assert not np.array_equal(arrays["vae"]["prior_samples"], arrays["direct"]["prior_samples"])


def test_streams_are_stable_and_distinct():
    a = torch.randn(3, generator=stream(0, "vae", "ais"))
    assert torch.equal(a, torch.randn(3, generator=stream(0, "vae", "ais")))
    # the same value in another process (the hash is blake2b of the names, not Python's hash(), salted per process)
    import os
    import subprocess
    import sys

    code = ("import json, torch; from latentfit.core.runtime import stream; "
            "print(json.dumps(torch.randn(3, generator=stream(0, 'vae', 'ais')).tolist()))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert json.loads(other) == a.tolist()
    assert not torch.equal(a, torch.randn(3, generator=stream(0, "direct", "ais")))
    assert not torch.equal(a, torch.randn(3, generator=stream(1, "vae", "ais")))


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


def test_the_schema_reads_back_the_comparison_file_this_release_writes():
    """tests/data/comparison_details.json: the final stage's comparison of two tiny fits, written by this
    release. The schema reads every number of it and writes the same file (a schema change must keep it)."""
    from pathlib import Path

    written = json.loads((Path(__file__).parent / "data/comparison_details.json").read_text())
    details = Details.from_dict(written)
    assert details.to_dict() == written
    assert details.headline()["ais"]["gap"] == written["pairs"]["direct"]["gap"]["ais"]["mean"]


def test_a_new_figure_is_its_function_and_one_registry_line(evaluated, monkeypatch):
    """Registered once: the final stage draws it, under its name, with every fit in it."""
    d = comparison(evaluated)

    def sample_grid(inputs: Inputs):
        fig, axes = plt.subplots(1, len(inputs.fits))
        for ax, fit in zip(axes, inputs.fits, strict=True):
            ax.imshow(inputs.arrays[fit]["prior_samples"][0].reshape(28, 28))
        return fig

    monkeypatch.setitem(panels.FIGURES, "first_sample", sample_grid)
    figs = draw(figure_inputs(evaluated, d, HISTORIES, []))
    assert set(figs) == expected(z_dim=3) and len(figs["first_sample"].axes) == 2
    for fig in figs.values():
        plt.close(fig)


def test_a_new_metric_is_its_computation_and_one_registry_line(evaluated, monkeypatch):
    """Registered once: in the headline (a `dvc exp show` column), the report's table and the sweep's summary."""
    from latentfit.evaluation import metrics, schema

    d = comparison(evaluated)
    width = metrics.Metric("bdmc_gap", "BDMC gap ({p.ais_steps} distributions)", lambda f: f.bdmc.gap,
                          "how loose AIS is at this schedule", headline=lambda f: True)
    monkeypatch.setattr(schema, "METRICS", [*schema.METRICS, width])
    monkeypatch.setattr("latentfit.visualize.report.METRICS", schema.METRICS)
    assert d.headline()["bdmc_gap"] == {n: s.bdmc.gap for n, s in d.fits.items()}
    report = render_report(d, evaluated[0])
    line = next(line for line in report.splitlines() if line.startswith("| BDMC gap (20 distributions)"))
    assert f"{d.fits['direct'].bdmc.gap:.2f}" in line and "how loose AIS is" in line
    assert schema.summary_metrics(d)["bdmc_gap.direct"][1](d) == d.fits["direct"].bdmc.gap


def test_the_comparison_refuses_fits_scored_on_different_data(evaluated):
    from latentfit.core.errors import DataError
    from latentfit.evaluation.schema import DataIdentity

    params, *_, ref, _, results, _, _ = evaluated
    grey = DataIdentity("mnist", "none", 300, 120, 300, 120, "t1", "a1")
    scores = {"vae": dataclasses.replace(results["vae"].scores, data=grey),
              "direct": dataclasses.replace(results["direct"].scores, data=dataclasses.replace(grey, binarize="static",
                                                                                                test_sha256="b2"))}
    images = {n: results[n].images for n in scores}
    with pytest.raises(DataError, match=r"direct and vae were scored on different data \(binarize 'none' vs "
                                        r"'static', test_sha256 'a1' vs 'b2'\)"):
        compare(scores, images, ref, params.evaluate)
    scores["direct"] = dataclasses.replace(results["direct"].scores, data=grey)
    assert compare(scores, images, ref, params.evaluate).fits["direct"].data == grey  # the same data: compared
