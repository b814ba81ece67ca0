"""metrics/report.md: the evaluate stage's numbers for both fits in one table, each with its meaning."""

from __future__ import annotations

from typing import Any

FIGURES = "../plots/figures"


def _fmt(value: float | None, se: float | None = None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def verdict(m: dict[str, Any]) -> str:
    """The report's first sentence: which fit is better, by how much, how sure, how well checked."""
    gap, check = m["gap"]["ais"], m["bdmc"]
    better, worse = ("VAE", "direct fit") if gap["mean"] > 0 else ("direct fit", "VAE")
    sure = "" if gap["lo"] > 0 or gap["hi"] < 0 else " (the interval includes 0: no clear winner)"
    bound = max(check["vae"]["gap"], check["direct"]["gap"])
    sign = 1 if gap["mean"] > 0 else -1  # the interval of the winner's advantage
    low, high = sorted((sign * gap["lo"], sign * gap["hi"]))
    return (f"**The {better}'s decoder is the better model of held-out images, by {abs(gap['mean']):.2f} nats per image** "
            f"(paired AIS NLL, {worse} minus {better}, over {gap['images']} test images; 95% interval "
            f"{low:.2f} to {high:.2f}){sure}; BDMC bounds the AIS error at this "
            f"schedule by {bound:.2f} nats per image (VAE {check['vae']['gap']:.2f}, direct {check['direct']['gap']:.2f}).")


def verdict_table(m: dict[str, Any], p: Any) -> list[str]:
    """The gap direct - VAE under each estimator, paired, every estimator on the same images."""
    names = {"ais": f"AIS ({p.ais_chains} chains x {p.ais_steps} distributions)",
             "iwae": f"IWAE (k = {p.iwae_samples})", "prior_mc": f"prior sampling (M = {p.prior_mc_samples})"}
    kind = {"ais": "stochastic upper bounds, checked by BDMC", "iwae": "stochastic upper bounds, encoder-dependent",
            "prior_mc": "stochastic upper bounds, biased up for small M"}
    lines = [f"Each estimator on the same first {m['verdict']['ais']['images']} test images (nats per image):", "",
             "| estimator | VAE NLL | direct NLL | gap direct - VAE | 95% interval | what the NLLs are |",
             "|---|---|---|---|---|---|"]
    for est, name in names.items():
        v = m["verdict"][est]
        lines.append(f"| {name} | {v['vae']:.2f} | {v['direct']:.2f} | {v['mean']:.2f} ± {v['se']:.2f} "
                     f"| {v['lo']:.2f} to {v['hi']:.2f} | {kind[est]} |")
    own = {est: m["gap"][est] for est in ("iwae", "prior_mc")}
    lines += ["", "Over more images: IWAE's gap over its {} images {:.2f} ± {:.2f}; prior sampling's over all {} "
              "test images {:.2f} ± {:.2f}.".format(own["iwae"]["images"], own["iwae"]["mean"], own["iwae"]["se"],
                                                   own["prior_mc"]["images"], own["prior_mc"]["mean"],
                                                   own["prior_mc"]["se"])]
    b = m["bdmc"]
    lines += ["", ("BDMC on images simulated from each fitted decoder (forward AIS: upper bound on the NLL, "
              "reverse AIS from the true latent: lower bound):"), "",
              "| decoder | upper NLL | lower NLL | distance (bounds the AIS error) |", "|---|---|---|---|"]
    lines += [f"| {name} | {b[name]['upper_nll']:.2f} | {b[name]['lower_nll']:.2f} | {b[name]['gap']:.2f} ± "
              f"{b[name]['gap_se']:.2f} |" for name in ("vae", "direct")]
    return lines


def render_report(m: dict[str, Any], params: Any) -> str:
    p, vae, direct = params.evaluate, m["vae"]["test"], m["direct"]["test"]
    floor = m["data"]["test"]["entropy_floor"]
    rows = [
        (f"AIS NLL ({p.ais_chains} chains, {p.ais_steps} distributions, first {p.ais_images} test images)",
         _fmt(vae["ais_nll"], vae["ais_nll_se"]), _fmt(direct["ais_nll"], direct["ais_nll_se"]),
         ("held-out -log p(y) by annealed importance sampling from the prior (HMC): no encoder, the same for both "
         "decoders; a stochastic upper bound whose looseness BDMC measures")),
        (f"IWAE NLL (k = {p.iwae_samples}, first {p.iwae_images} test images)",
         _fmt(vae["iwae_nll"], vae["iwae_nll_se"]), _fmt(direct["iwae_nll"], direct["iwae_nll_se"]),
         ("held-out -log p(y) by importance sampling with an encoder as proposal (the direct fit's is fitted post hoc "
         "to its frozen decoder); a stochastic upper bound that tightens with k, loose where the encoder fits badly")),
        ("excess over the entropy floor", _fmt(vae["excess"]), _fmt(direct["excess"]),
         (f"AIS NLL minus sum_j H(y_j) of the same images (all test images: {floor:.2f}): grayscale data keep any "
         "Bernoulli model above that floor")),
        (f"prior-sampling NLL (M = {p.prior_mc_samples} fresh draws)", _fmt(vae["prior_mc_nll"]),
         _fmt(direct["prior_mc_nll"]),
         "-log (1/M) sum_m p(y \\| z_m), z_m from the prior: the direct fit's own estimator, biased upwards for small M"),
        ("NLL with the direct fit's own training draws", "n/a", _fmt(direct.get("train_draws_nll")),
         "the same estimator with the very M draws the direct fit trained on"),
        ("test -ELBO (rec + KL)", f"{vae['neg_elbo']:.2f} ({vae['rec']:.2f} + {vae['kl']:.2f})", "n/a",
         "the VAE's bound with its amortised encoder, one draw per image"),
        ("IWAE NLL, post-hoc encoder (control)", _fmt(vae["iwae_nll_posthoc"]), "n/a",
         "the VAE's decoder measured the way the direct fit is: close to the IWAE NLL row means the recipe is fair"),
        (f"kNN accuracy of latent means (k = {p.knn_neighbours})", _fmt(m["latent"]["vae"]["knn_accuracy"], digits=3),
         _fmt(m["latent"]["direct"]["knn_accuracy"], digits=3),
         "labels predicted from the nearest training latents: how much class structure the latent space keeps"),
        ("silhouette of label clusters", _fmt(m["latent"]["vae"]["silhouette"], digits=3),
         _fmt(m["latent"]["direct"]["silhouette"], digits=3), "-1 .. 1, higher: classes better separated in z"),
        ("Frechet distance of prior samples", _fmt(m["samples"]["vae"]["fid"]), _fmt(m["samples"]["direct"]["fid"]),
         (f"between classifier features of samples and test images (real train vs test: "
         f"{m['samples']['data_fid']:.2f}); not Inception FID")),
    ]
    for i, entry in enumerate(m["denoise"].values()):
        rows.append((f"denoising BCE, flip probability {entry['flip_prob']:g}", _fmt(entry["vae_bce"]),
                     _fmt(entry["direct_bce"]), "the same, each pixel flipped with this probability" if i else
                     "reconstruction of a noisy test image against the clean one: VAE encoder (posterior mean) "
                     f"vs best of {p.search_candidates} prior draws"))
    table = ["| metric | VAE | direct | what it means |", "|---|---|---|---|"]
    table += [f"| {name} | {a} | {b} | {meaning} |" for name, a, b, meaning in rows]
    return "\n".join([
        "# VAE vs direct fit",
        "",
        verdict(m),
        "",
        *verdict_table(m, p),
        "",
        "Every metric:",
        "",
        (f"Dataset `{params.data.dataset}`, test split; likelihoods in nats per image, lower is better. "
        f"Feature classifier test accuracy {m['samples']['classifier_accuracy']:.3f}. "
        f"Evaluate stage wall time {m['seconds']:.0f} s."),
        "",
        *table,
        "",
        (f"Figures: [each estimator against its cost]({FIGURES}/estimator_convergence.png), "
        f"[prior-sampling NLL against M]({FIGURES}/prior_mc_curve.png), "
        f"[denoising sweep]({FIGURES}/denoise_sweep.png), [samples]({FIGURES}/samples_vae_vs_direct.png), "
        f"[reconstructions]({FIGURES}/search_reconstruction.png), [t-SNE]({FIGURES}/tsne_vae.png)."),
        "",
    ])
