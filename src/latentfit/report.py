"""metrics/report.md: the evaluate stage's numbers for both fits in one table, each with its meaning."""

from __future__ import annotations

import math

from .config import EvaluateParams, Params
from .evaluation.schema import Details, fmt, verdict
from .evaluation.why import Anatomy, InferenceGaps, walk

FIGURES = "../plots/figures"


def headline_verdict(m: Details) -> str:
    """The report's first sentence: which fit is better, by how much, how sure, how well checked."""
    gap, check = m.gap.ais, m.bdmc
    sentence, worse = verdict(gap, f"{gap.images} test images")
    better = "VAE" if worse == "direct fit" else "direct fit"
    bound = max(check.vae.gap, check.direct.gap)
    return (f"**{sentence[0].upper()}{sentence[1:]}** (its decoder is the better model of held-out images: paired "
            f"AIS NLL, {worse} minus {better}); BDMC bounds the AIS error at this schedule by {bound:.2f} nats per "
            f"image (VAE {check.vae.gap:.2f}, direct {check.direct.gap:.2f}).")


def verdict_table(m: Details, p: EvaluateParams) -> list[str]:
    """The gap direct - VAE under each estimator, paired, every estimator on the same images."""
    names = {"ais": f"AIS ({p.ais_chains} chains x {p.ais_steps} distributions)",
             "iwae": f"IWAE (k = {p.iwae_samples})", "prior_mc": f"prior sampling (M = {p.prior_mc_samples})"}
    kind = {"ais": "stochastic upper bounds, checked by BDMC", "iwae": "stochastic upper bounds, encoder-dependent",
            "prior_mc": "stochastic upper bounds, biased up for small M"}
    lines = [f"Each estimator on the same first {m.verdict.ais.images} test images (nats per image):", "",
             "| estimator | VAE NLL | direct NLL | gap direct - VAE | 95% interval | what the NLLs are |",
             "|---|---|---|---|---|---|"]
    for est, name in names.items():
        v = getattr(m.verdict, est)
        lines.append(f"| {name} | {fmt(v.vae)} | {fmt(v.direct)} | {fmt(v.mean, v.se)} "
                     f"| {fmt(v.lo)} to {fmt(v.hi)} | {kind[est]} |")
    iwae, prior = m.gap.iwae, m.gap.prior_mc
    lines += ["", (f"Over more images: IWAE's gap over its {iwae.images} images {fmt(iwae.mean, iwae.se)}; prior "
                   f"sampling's over all {prior.images} test images {fmt(prior.mean, prior.se)}.")]
    b = m.bdmc
    lines += ["", ("BDMC on images simulated from each fitted decoder (forward AIS: upper bound on the NLL, "
              "reverse AIS from the true latent: lower bound):"), "",
              "| decoder | upper NLL | lower NLL | distance (bounds the AIS error) |", "|---|---|---|---|"]
    lines += [f"| {name} | {fmt(c.upper_nll)} | {fmt(c.lower_nll)} | {fmt(c.gap, c.gap_se)} |"
              for name, c in (("vae", b.vae), ("direct", b.direct))]
    return lines


def _gap_rows(name: str, where: str, g: InferenceGaps) -> str:
    full = fmt(g.optimised_full)
    cov = fmt(g.covariance.mean, g.covariance.se) if g.covariance is not None else "n/a"
    return (f"| {name} | {where} ({g.images}) | {fmt(g.amortised)} | {fmt(g.optimised)} | {full} | {fmt(g.ais)} "
            f"| {fmt(g.amortisation.mean, g.amortisation.se)} | {cov} | {fmt(g.approximation.mean, g.approximation.se)} |")


def _diagonal_miss(g: InferenceGaps) -> float:
    """The best diagonal Gaussian's -ELBO above the AIS NLL."""
    return g.optimised - g.ais


def class_names(dataset: str) -> list[str]:
    """The dataset's class names, as torchvision's dataset classes carry them (nothing is downloaded)."""
    from torchvision import datasets

    source = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "kmnist": datasets.KMNIST}.get(dataset)
    return list(source.classes) if source is not None else []


def why_section(m: Details, p: EvaluateParams, dataset: str = "") -> list[str]:
    """The notebook's question, in numbers: what each step from the direct fit's objective to the VAE's
    likelihood is worth, where each decoder's bound loses, and which estimates can be trusted."""
    a: Anatomy | None = m.anatomy
    if a is None:
        return []
    stops = walk(m)
    steps = [f"{label} **{value:.2f}**" for label, value in stops]
    lines = ["## Why the decoders differ", "",
             (f"On the verdict's first {m.verdict.ais.images} test images (nats per image, lower is better), from the "
              "direct fit's own objective to the VAE's likelihood and back up to the VAE's own bound: "
              + " -> ".join(steps) + f" ([figure]({FIGURES}/gap_walk.png))."), ""]
    v, d = a.vae.test, a.direct.test
    lines += [("**In short.** Posterior shape, per decoder: the best full-covariance Gaussian is "
               f"{v.approximation.mean:.2f} nats from the VAE decoder's AIS NLL and {d.approximation.mean:.2f} from the "
               f"direct fit's; a diagonal one {_diagonal_miss(v):.2f} and {_diagonal_miss(d):.2f}; their encoders lose "
               f"{v.amortisation.mean:.2f} and {d.amortisation.mean:.2f} more. The decoders themselves differ by "
               f"{m.verdict.ais.mean:.2f} nats of AIS NLL, rate (KL of the exact posterior from the prior) "
               f"{a.vae.posterior.rate:.2f} against {a.direct.posterior.rate:.2f}, distortion "
               f"{a.vae.posterior.distortion:.2f} against {a.direct.posterior.distortion:.2f}."), ""]
    if a.mixture is not None:
        mix = a.mixture
        lines += [(f"**The direct fit is a mixture.** With its {mix.components} training draws fixed, its objective is "
                   f"the likelihood of a {mix.components}-component Bernoulli mixture; on all training images "
                   f"{mix.used} components carry at least one image's worth of responsibility, the pooled "
                   f"responsibility has the perplexity of {mix.perplexity:.1f} equally used components, and each image "
                   f"is explained by {mix.per_image:.2f} components on average. On {mix.images} training images its "
                   f"objective is {fmt(mix.objective_nll)} against an AIS NLL of {fmt(mix.ais_nll)} for the same "
                   f"decoder: the objective is {fmt(mix.objective_gap.mean, mix.objective_gap.se)} nats looser than "
                   "the likelihood it stands for. Fresh prior draws do not rescue it: the decoder was fitted to "
                   "those few points of z, not to the prior."), ""]
    lines += [("**Inference gaps** (Cremer et al. 2018): -ELBO of the encoder's q (the direct fit's is post hoc), of "
               f"the best Gaussian for each image ({p.gap_steps} Adam steps, diagonal then full covariance), and the AIS "
               "NLL, all on the same images; amortisation = encoder - best diagonal, covariance = diagonal - full, "
               "approximation = best Gaussian - AIS (each >= 0 in theory, ± standard error over images):"), "",
              "| decoder | images | encoder -ELBO | best diagonal | best full | AIS NLL | amortisation | covariance "
              "| approximation |", "|---|---|---|---|---|---|---|---|---|"]
    for name, fit in (("VAE", a.vae), ("direct", a.direct)):
        lines.append(_gap_rows(name, "test", fit.test))
        if fit.train is not None:
            lines.append(_gap_rows(name, "train", fit.train))
    if a.vae.train is not None and a.direct.train is not None:
        lines += ["", ("Test minus train, per part (different images, so the AIS NLL's difference carries the spread "
                       "between images, its standard error given; the gaps' differences are far better resolved): "
                       "the decoder's part is the AIS NLL's, the encoder's the amortisation gap's:"), ""]
        for name, fit in (("VAE", a.vae), ("direct", a.direct)):
            tr, te = fit.train, fit.test
            assert tr is not None
            spread = math.hypot(te.ais_se or 0.0, tr.ais_se or 0.0)
            lines.append(f"- {name}: AIS NLL {te.ais - tr.ais:+.2f} ± {spread:.2f}; amortisation gap "
                         f"{te.amortisation.mean - tr.amortisation.mean:+.2f} ± "
                         f"{math.hypot(te.amortisation.se, tr.amortisation.se):.2f}; approximation gap "
                         f"{te.approximation.mean - tr.approximation.mean:+.2f} ± "
                         f"{math.hypot(te.approximation.se, tr.approximation.se):.2f}.")
    lines += ["", ("**Rate and distortion** of the exact posterior (Huang et al. 2020, from the AIS path at beta = 1: "
                   "rate = KL(p(z|y) || p(z)), distortion = E[-log p(y|z)], rate + distortion = AIS NLL), beside the "
                   "encoder's q on the same images (its KL and reconstruction terms; active units and KL per "
                   f"dimension over all test images) ([curve for beta <= 1]({FIGURES}/rate_distortion.png)):"), "",
              "| decoder | exact rate | exact distortion | sum | AIS NLL | encoder's KL | encoder's rec | active units "
              "| largest KL per dimension |", "|---|---|---|---|---|---|---|---|---|"]
    for name, fit in (("VAE", a.vae), ("direct", a.direct)):
        post, enc = fit.posterior, fit.encoder
        lines.append(f"| {name} | {fmt(post.rate, post.rate_se)} | {fmt(post.distortion, post.distortion_se)} "
                     f"| {fmt(post.rate + post.distortion)} | {fmt(fit.test.ais)} | {fmt(enc.rate)} | {fmt(enc.distortion)} "
                     f"| {enc.active_units} of {len(enc.kl_per_dim)} | {', '.join(f'{v:.2f}' for v in enc.kl_per_dim[:5])} |")
    lines += ["", ("**Can each importance-sampling estimate be trusted?** Effective sample size (sum w)^2 / sum w^2 per "
                   "image and PSIS's Pareto k (k > 0.7: unreliable, whatever its spread); prior sampling needs log M "
                   "above the posterior's rate:"), "",
              "| estimate | decoder | draws | median ESS | least ESS | median k | k > 0.7 | rate > log M |",
              "|---|---|---|---|---|---|---|---|"]
    for name, fit in (("VAE", a.vae), ("direct", a.direct)):
        for label, r in (("prior sampling", fit.prior_sampling), ("IWAE", fit.iwae)):
            above = "n/a" if r.rate_above_log_draws is None else f"{r.rate_above_log_draws} of {r.k_images}"
            k = fmt(r.k_median) if r.k_median is not None else "inf"
            lines.append(f"| {label} | {name} | {r.draws} | {r.ess_median:.1f} | {r.ess_min:.2f} | {k} "
                         f"| {r.flagged} of {r.k_images} | {above} |")
    if a.by_class:
        lines += ["", "**The gap by class** (direct - VAE, paired, 95% intervals; AIS on the verdict's images, IWAE on "
                  "its own):", "", "| class | AIS gap | AIS interval | images | IWAE gap | IWAE interval | images |",
                  "|---|---|---|---|---|---|---|"]
        names = class_names(dataset)
        for c, g in a.by_class.items():
            name = names[int(c)] if int(c) < len(names) else c
            lines.append(f"| {name} | {fmt(g.ais.mean)} | {fmt(g.ais.lo)} to {fmt(g.ais.hi)} | {g.ais.images} "
                         f"| {fmt(g.iwae.mean)} | {fmt(g.iwae.lo)} to {fmt(g.iwae.hi)} | {g.iwae.images} |")
    return [*lines, ""]


def render_report(m: Details, params: Params) -> str:
    p, vae, direct = params.evaluate, m.vae.test, m.direct.test
    floor = m.data.test.entropy_floor
    rows = [
        (f"AIS NLL ({p.ais_chains} chains, {p.ais_steps} distributions, first {p.ais_images} test images)",
         fmt(vae.ais_nll, vae.ais_nll_se), fmt(direct.ais_nll, direct.ais_nll_se),
         ("held-out -log p(y) by annealed importance sampling from the prior (HMC): no encoder, the same for both "
         "decoders; a stochastic upper bound whose looseness BDMC measures")),
        (f"IWAE NLL (k = {p.iwae_samples}, first {p.iwae_images} test images)",
         fmt(vae.iwae_nll, vae.iwae_nll_se), fmt(direct.iwae_nll, direct.iwae_nll_se),
         ("held-out -log p(y) by importance sampling with an encoder as proposal (the direct fit's is fitted post hoc "
         "to its frozen decoder); a stochastic upper bound that tightens with k, loose where the encoder fits badly")),
        ("excess over the entropy floor", fmt(vae.excess), fmt(direct.excess),
         (f"AIS NLL minus sum_j H(y_j) of the same images (all test images: {floor:.2f}): grayscale data keep any "
         "Bernoulli model above that floor")),
        (f"prior-sampling NLL (M = {p.prior_mc_samples} fresh draws)", fmt(vae.prior_mc_nll),
         fmt(direct.prior_mc_nll),
         "-log (1/M) sum_m p(y \\| z_m), z_m from the prior: the direct fit's own estimator, biased upwards for small M"),
        ("NLL with the direct fit's own training draws", "n/a", fmt(direct.train_draws_nll),
         "the same estimator with the very M draws the direct fit trained on"),
        ("test -ELBO (rec + KL)", f"{fmt(vae.neg_elbo)} ({fmt(vae.rec)} + {fmt(vae.kl)})", "n/a",
         "the VAE's bound with its amortised encoder, one draw per image"),
        ("IWAE NLL, post-hoc encoder (control)", fmt(vae.iwae_nll_posthoc), "n/a",
         "the VAE's decoder measured the way the direct fit is: close to the IWAE NLL row means the recipe is fair"),
        (f"kNN accuracy of latent means (k = {p.knn_neighbours})", fmt(m.latent.vae.knn_accuracy, digits=3),
         fmt(m.latent.direct.knn_accuracy, digits=3),
         "labels predicted from the nearest training latents: how much class structure the latent space keeps"),
        ("silhouette of label clusters", fmt(m.latent.vae.silhouette, digits=3),
         fmt(m.latent.direct.silhouette, digits=3), "-1 .. 1, higher: classes better separated in z"),
        ("Frechet distance of prior samples", fmt(m.samples.vae.fid), fmt(m.samples.direct.fid),
         (f"between classifier features of samples and test images (real train vs test: "
         f"{m.samples.data_fid:.2f}); not Inception FID")),
    ]
    for i, entry in enumerate(m.denoise.values()):
        rows.append((f"denoising BCE, flip probability {entry.flip_prob:g}", fmt(entry.vae_bce),
                     fmt(entry.direct_bce), "the same, each pixel flipped with this probability" if i else
                     "reconstruction of a noisy test image against the clean one: VAE encoder (posterior mean) "
                     f"vs best of {p.search_candidates} prior draws"))
    table = ["| metric | VAE | direct | what it means |", "|---|---|---|---|"]
    table += [f"| {name} | {a} | {b} | {meaning} |" for name, a, b, meaning in rows]
    return "\n".join([
        "# VAE vs direct fit",
        "",
        headline_verdict(m),
        "",
        *verdict_table(m, p),
        "",
        *why_section(m, p, params.data.dataset),
        "Every metric:",
        "",
        (f"Dataset `{params.data.dataset}`, test split; likelihoods in nats per image, lower is better. "
        f"Feature classifier test accuracy {m.samples.classifier_accuracy:.3f}. "
        f"Evaluate stage wall time {m.seconds:.0f} s."),
        "",
        *table,
        "",
        (f"Figures: [each estimator against its cost]({FIGURES}/estimator_convergence.png), "
        f"[prior-sampling NLL against M]({FIGURES}/prior_mc_curve.png), "
        f"[denoising sweep]({FIGURES}/denoise_sweep.png), [samples]({FIGURES}/samples_vae_vs_direct.png), "
        f"[reconstructions]({FIGURES}/search_reconstruction.png), [t-SNE]({FIGURES}/tsne_vae.png)."),
        "",
    ])
