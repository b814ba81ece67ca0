"""metrics/report.md: the comparison of every fit, in tables with the meaning of each number."""

from __future__ import annotations

import math
from collections.abc import Sequence

from tabulate import tabulate

from latentfit.core.config import EvaluateParams, Params
from latentfit.core.fits import label
from latentfit.evaluation.anatomy_records import InferenceGaps
from latentfit.evaluation.metrics import METRICS, Metric
from latentfit.evaluation.schema import Details, FitScores, fmt, verdict, walk

FIGURES = "../plots/figures"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A GitHub Markdown table (tabulate), as lines."""
    return tabulate(rows, headers=list(header), tablefmt="github", disable_numparse=True).splitlines()


def class_names(dataset: str) -> list[str]:
    """The dataset's class names, as torchvision's dataset classes carry them (nothing is downloaded)."""
    from torchvision import datasets

    source = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "kmnist": datasets.KMNIST}.get(dataset)
    return list(source.classes) if source is not None else []


def headline_verdict(m: Details) -> str:
    """The report's first sentence: which fit is better, by how much, how sure, how well checked."""
    fit, base = m.challenger, m.baseline
    gap = m.pairs[fit].gap.ais
    sentence, worse = verdict(gap, f"{gap.images} test images", fit, base)
    better = label(base) if worse == label(fit) else label(fit)
    checks = ", ".join(f"{label(f)} {s.bdmc.gap:.2f}" for f, s in m.fits.items())
    others = [verdict(p.gap.ais, f"{p.gap.ais.images} test images", f, base)[0] for f, p in m.pairs.items() if f != fit]
    return (f"**{sentence[0].upper()}{sentence[1:]}** (its decoder is the better model of held-out images: paired "
            f"AIS NLL, {worse} minus {better}); BDMC bounds the AIS error at this schedule by "
            f"{max(s.bdmc.gap for s in m.fits.values()):.2f} nats per image ({checks})."
            + "".join(f" Also: {s}." for s in others))


def verdict_table(m: Details, p: EvaluateParams) -> list[str]:
    """Each fit's NLL and its gap to the baseline under each estimator, every estimator on the same images."""
    names = {"ais": f"AIS ({p.ais_chains} chains x {p.ais_steps} distributions)",
             "iwae": f"IWAE (k = {p.iwae_samples})", "prior_mc": f"prior sampling (M = {p.prior_mc_samples})"}
    base = label(m.baseline)
    header = ["estimator", *[f"{label(f)} NLL" for f in m.fits],
              *[f"gap {label(f)} - {base} (95% interval)" for f in m.pairs]]
    rows = []
    for est, name in names.items():
        first = {f: getattr(pair.verdict, est) for f, pair in m.pairs.items()}
        nll = {f: r.fit for f, r in first.items()}
        if first:  # every pair holds the baseline's NLL on the same images
            nll[m.baseline] = next(iter(first.values())).baseline
        rows.append([name, *[fmt(nll.get(f)) for f in m.fits],
                     *[f"{fmt(r.mean, r.se)} ({fmt(r.lo)} to {fmt(r.hi)})" for r in first.values()]])
    n = p.ais_images
    lines = [f"Each estimator on the same first {n} test images (nats per image; all are stochastic upper bounds "
             "on the NLL: AIS checked by BDMC, IWAE depends on the encoder, prior sampling is biased up for small M):",
             "", *table(header, rows), ""]
    for f, pair in m.pairs.items():
        iwae, prior = pair.gap.iwae, pair.gap.prior_mc
        lines.append(f"Over more images, {label(f)} - {base}: IWAE's gap over its {iwae.images} images "
                     f"{fmt(iwae.mean, iwae.se)}; prior sampling's over all {prior.images} test images "
                     f"{fmt(prior.mean, prior.se)}.")
    lines += ["", ("BDMC on images simulated from each fitted decoder (forward AIS: upper bound on the NLL, "
                   "reverse AIS from the true latent: lower bound):"), ""]
    lines += table(["decoder", "upper NLL", "lower NLL", "distance (bounds the AIS error)"],
                   [[label(f), fmt(s.bdmc.upper_nll), fmt(s.bdmc.lower_nll), fmt(s.bdmc.gap, s.bdmc.gap_se)]
                    for f, s in m.fits.items()])
    return lines


def _gap_row(name: str, where: str, g: InferenceGaps) -> list[str]:
    cov = fmt(g.covariance.mean, g.covariance.se) if g.covariance is not None else "n/a"
    return [name, f"{where} ({g.images})", fmt(g.amortised), fmt(g.optimised), fmt(g.optimised_full), fmt(g.ais),
            fmt(g.amortisation.mean, g.amortisation.se), cov, fmt(g.approximation.mean, g.approximation.se)]


def _anatomy_tables(fits: dict[str, FitScores]) -> list[str]:
    """Inference gaps, the exact posterior's rate and distortion, and the reliability of each estimate."""
    gaps = []
    for f, s in fits.items():
        assert s.anatomy is not None
        gaps.append(_gap_row(label(f), "test", s.anatomy.test))
        if s.anatomy.train is not None:
            gaps.append(_gap_row(label(f), "train", s.anatomy.train))
    lines = ["**Inference gaps** (Cremer et al. 2018): -ELBO of the encoder's q (post hoc for a fit without one), of "
             "the best Gaussian for each image (diagonal then full covariance), and the AIS NLL, all on the same "
             "images; amortisation = encoder - best diagonal, covariance = diagonal - full, approximation = best "
             "Gaussian - AIS (each >= 0 in theory, ± standard error over images):", "",
             *table(["decoder", "images", "encoder -ELBO", "best diagonal", "best full", "AIS NLL", "amortisation",
                     "covariance", "approximation"], gaps), ""]
    moved = []
    for f, s in fits.items():
        tr, te = s.anatomy.train, s.anatomy.test  # type: ignore[union-attr]
        if tr is None:
            continue
        moved.append(f"- {label(f)}: AIS NLL {te.ais - tr.ais:+.2f} ± {math.hypot(te.ais_se or 0, tr.ais_se or 0):.2f}; "
                     f"amortisation gap {te.amortisation.mean - tr.amortisation.mean:+.2f} ± "
                     f"{math.hypot(te.amortisation.se, tr.amortisation.se):.2f}; approximation gap "
                     f"{te.approximation.mean - tr.approximation.mean:+.2f} ± "
                     f"{math.hypot(te.approximation.se, tr.approximation.se):.2f}.")
    if moved:
        lines += ["Test minus train, per part (different images: the AIS NLL's difference carries the spread between "
                  "images; the gaps' differences are far better resolved):", "", *moved, ""]
    rd = [[label(f), fmt(a.posterior.rate, a.posterior.rate_se), fmt(a.posterior.distortion, a.posterior.distortion_se),
           fmt(a.posterior.rate + a.posterior.distortion), fmt(a.test.ais), fmt(a.encoder.rate), fmt(a.encoder.distortion),
           f"{a.encoder.active_units} of {len(a.encoder.kl_per_dim)}", ", ".join(f"{v:.2f}" for v in a.encoder.kl_per_dim[:5])]
          for f, s in fits.items() if (a := s.anatomy) is not None]
    lines += [("**Rate and distortion** of the exact posterior (Huang et al. 2020, from the AIS path at beta = 1: "
               "rate = KL(p(z|y) || p(z)), distortion = E[-log p(y|z)], rate + distortion = AIS NLL), beside the "
               "encoder's q on the same images ([curve for beta <= 1]"
               f"({FIGURES}/rate_distortion.png)):"), "",
              *table(["decoder", "exact rate", "exact distortion", "sum", "AIS NLL", "encoder's KL", "encoder's rec",
                      "active units", "largest KL per dimension"], rd), ""]
    trust = []
    for f, s in fits.items():
        for what, r in (("prior sampling", s.anatomy.prior_sampling), ("IWAE", s.anatomy.iwae)):  # type: ignore[union-attr]
            above = "n/a" if r.rate_above_log_draws is None else f"{r.rate_above_log_draws} of {r.k_images}"
            trust.append([what, label(f), r.draws, f"{r.ess_median:.1f}", f"{r.ess_min:.2f}",
                          fmt(r.k_median) if r.k_median is not None else "inf", f"{r.flagged} of {r.k_images}", above])
    lines += [("**Can each importance-sampling estimate be trusted?** Effective sample size per image and PSIS's "
               "Pareto k (k > 0.7: unreliable, whatever its spread); prior sampling needs log M above the "
               "posterior's rate:"), "",
              *table(["estimate", "decoder", "draws", "median ESS", "least ESS", "median k", "k > 0.7", "rate > log M"],
                     trust), ""]
    return lines


def why_section(m: Details, classes: list[str]) -> list[str]:
    """The notebook's question, in numbers: what each step from one fit's objective to the baseline's
    likelihood is worth, where each decoder's bound loses, and which estimates can be trusted."""
    if any(s.anatomy is None for s in m.fits.values()):
        return []
    fit = m.challenger
    stops = " -> ".join(f"{text} **{value:.2f}**" for text, value in walk(m))
    lines = ["## Why the decoders differ", "",
             (f"On the verdict's first {m.pairs[fit].verdict.ais.images} test images (nats per image, lower is better): "
              f"{stops} ([figure]({FIGURES}/gap_walk.png))."), ""]
    for f, s in m.fits.items():
        if s.mixture is not None:
            mix = s.mixture
            lines += [(f"**The {label(f)} is a mixture.** With its {mix.components} training draws fixed, its objective is "
                       f"the likelihood of a {mix.components}-component Bernoulli mixture: {mix.used} components carry "
                       f"at least one training image's worth of responsibility, the pooled responsibility has the "
                       f"perplexity of {mix.perplexity:.1f} equally used components, each image is explained by "
                       f"{mix.per_image:.2f}. On {mix.images} training images its objective is {fmt(mix.objective_nll)} "
                       f"against an AIS NLL of {fmt(mix.ais_nll)}: {fmt(mix.objective_gap.mean, mix.objective_gap.se)} "
                       "nats looser than the likelihood it stands for."), ""]
    lines += _anatomy_tables(m.fits)
    classes_seen = sorted({c for pair in m.pairs.values() for c in pair.by_class}, key=int)
    if classes_seen:
        base, rows = label(m.baseline), []
        for c in classes_seen:
            row: list[object] = [_class(classes, c)]
            for pair in m.pairs.values():
                g = pair.by_class.get(c)
                row += ["n/a", "n/a"] if g is None else [
                    f"{fmt(g.ais.mean)} ({fmt(g.ais.lo)} to {fmt(g.ais.hi)}, {g.ais.images})",
                    f"{fmt(g.iwae.mean)} ({fmt(g.iwae.lo)} to {fmt(g.iwae.hi)}, {g.iwae.images})"]
            rows.append(row)
        header = ["class", *[f"{what} gap {label(f)} - {base}" for f in m.pairs for what in ("AIS", "IWAE")]]
        lines += ["**The gap by class** (paired; in brackets the 95% interval and the images: AIS on the verdict's "
                  "images, IWAE on its own):", "", *table(header, rows), ""]
    return lines


def _class(classes: list[str], c: str) -> str:
    return classes[int(c)] if int(c) < len(classes) else c


def metric_rows(m: Details, p: EvaluateParams) -> list[list[object]]:
    """Every per-fit number: (metric, a value per fit, its meaning): schema.METRICS, then the denoising sweep."""
    fits = list(m.fits.values())

    def row(name: str, values: list[str], meaning: str) -> list[object]:
        return [name, *values, meaning]

    def each(metric: Metric) -> list[str]:
        values = [(metric.read(s), metric.se(s) if metric.se else None) for s in fits]
        return [fmt(v, se, metric.digits) if v is not None else "n/a" for v, se in values]

    rows = [row(metric.label.format(p=p), each(metric), metric.meaning.format(p=p, ref=m.reference))
            for metric in METRICS]
    def denoise_bce(key: str) -> Metric:
        return Metric("denoise", "", lambda s: s.denoise[key].bce)

    for i, key in enumerate(fits[0].denoise):
        prob = fits[0].denoise[key].flip_prob
        bce = denoise_bce(key)
        rows.append(row(f"denoising BCE, flip probability {prob:g}", each(bce),
                        "the same, each pixel flipped with this probability" if i else
                        "reconstruction of a pixel-flipped test image against the clean one: a fit's encoder "
                        f"(posterior mean), or the best of {p.search_candidates} prior draws"))
    return rows


def render_report(m: Details, params: Params) -> str:
    p, classes = params.evaluate, class_names(params.data.dataset)
    seconds = ", ".join(f"{label(f)} {s.seconds:.0f} s" + (f" on {s.ran_on.device} ({s.ran_on.device_name}, torch "
                                                           f"{s.ran_on.torch})" if s.ran_on else "")
                        for f, s in m.fits.items())
    return "\n".join([
        f"# {' vs '.join(label(f) for f in m.fits)}", "", headline_verdict(m), "", *verdict_table(m, p), "",
        *why_section(m, classes),
        "Every metric:", "",
        (f"Dataset `{params.data.dataset}`, test split; likelihoods in nats per image, lower is better. "
         f"Feature classifier test accuracy {m.reference.classifier_accuracy:.3f}. Evaluate stage wall time: {seconds}."),
        "", *table(["metric", *[label(f) for f in m.fits], "what it means"], metric_rows(m, p)), "",
        (f"Figures: [each estimator against its cost]({FIGURES}/estimator_convergence.png), "
         f"[prior-sampling NLL against M]({FIGURES}/prior_mc_curve.png), "
         f"[denoising sweep]({FIGURES}/denoise_sweep.png), [samples]({FIGURES}/samples_same_z.png), "
         f"[denoising]({FIGURES}/denoising.png), [t-SNE]({FIGURES}/tsne.png)."),
        "",
    ])
