"""Seed statistics of a sweep, read from its experiments' own metrics (the files DVC committed for each):
for every grid point, across seeds, the mean, standard deviation and 95% t-interval of the headline
metrics, and of the paired per-seed gap direct - VAE. Written as Markdown, CSV and a figure."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import LatentfitError
from ..io import save_figure, write_text
from .grid import point_label

# name: (label, file, keys); NLLs in nats per image, lower is better
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "ais.gap": ("gap direct - VAE, AIS NLL", "metrics/evaluate.json", ("ais", "gap")),
    "iwae.gap": ("gap direct - VAE, IWAE NLL", "metrics/evaluate.json", ("iwae", "gap")),
    "ais.vae": ("AIS NLL, VAE", "metrics/evaluate.json", ("ais", "vae")),
    "ais.direct": ("AIS NLL, direct", "metrics/evaluate.json", ("ais", "direct")),
    "iwae.vae": ("IWAE NLL, VAE", "metrics/evaluate.json", ("iwae", "vae")),
    "iwae.direct": ("IWAE NLL, direct", "metrics/evaluate.json", ("iwae", "direct")),
    "prior.vae": ("prior-sampling NLL, VAE", "metrics/evaluate_details.json", ("vae", "test", "prior_mc_nll")),
    "prior.direct": ("prior-sampling NLL, direct", "metrics/evaluate.json", ("prior", "direct")),
    "nelbo.vae": ("test -ELBO, VAE", "metrics/evaluate.json", ("nelbo", "vae")),
    "knn.vae": ("kNN accuracy of latent means, VAE", "metrics/evaluate_details.json", ("latent", "vae", "knn_accuracy")),
    "knn.direct": ("kNN accuracy of latent means, direct", "metrics/evaluate_details.json",
                   ("latent", "direct", "knn_accuracy")),
    "fd.vae": ("sample Frechet distance, VAE", "metrics/evaluate_details.json", ("samples", "vae", "fid")),
    "fd.direct": ("sample Frechet distance, direct", "metrics/evaluate_details.json", ("samples", "direct", "fid")),
}


def seed_statistics(values: list[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample standard deviation and the t-interval of the mean over seeds (NaN with one seed)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n, mean = len(x), float(x.mean())
    if n < 2:
        return {"n": n, "mean": mean, "sd": math.nan, "lo": math.nan, "hi": math.nan}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half}


def read_at(repo: Path, ref: str, path: str) -> dict[str, Any]:
    shown = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=repo, capture_output=True, text=True, check=False)
    return json.loads(shown.stdout) if shown.returncode == 0 else {}


def _dig(tree: dict[str, Any], keys: tuple[str, ...]) -> float:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return math.nan
        tree = tree[key]
    return float(tree) if isinstance(tree, (int, float)) else math.nan


def run_metrics(repo: Path, commit: str, plan: dict[str, Any]) -> pd.DataFrame:
    """One row per landed run: its grid point, seed and headline metrics, from its experiment's commit."""
    from .driver import exp_ref_prefix, landed

    present = landed(repo, commit)
    rows = []
    for run in plan["runs"]:
        if run["name"] not in present:
            continue
        ref, files = exp_ref_prefix(commit) + run["name"], {}
        row = {"run": run["name"], "point": point_label(run["point"].items()), **run["point"], "seed": run["seed"]}
        for metric, (_, path, keys) in METRICS.items():
            files.setdefault(path, read_at(repo, ref, path))
            row[metric] = _dig(files[path], keys)
        rows.append(row)
    return pd.DataFrame(rows)


def statistics(runs: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per grid point and metric, with n, mean, sd and the 95% interval."""
    rows = []
    for point, group in runs.groupby("point", sort=False):
        for metric, (label, _, _) in METRICS.items():
            values = group[metric].dropna().tolist()
            if values:
                rows.append({"point": point, "metric": metric, "label": label, **seed_statistics(values)})
    return pd.DataFrame(rows)


def _num(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def verdict(point: str, stats: pd.DataFrame, metric: str = "ais.gap") -> str:
    s = stats[(stats.point == point) & (stats.metric == metric)]
    if s.empty:
        return f"{point}: no {metric} landed"
    s = s.iloc[0]
    better, sign = ("VAE", 1) if s["mean"] > 0 else ("direct fit", -1)
    lo, hi = sorted((sign * s["lo"], sign * s["hi"]))
    spread = (f"95% interval {_num(lo)} to {_num(hi)}, sd {_num(s['sd'])} over {s['n']} seeds"
              if s["n"] > 1 else "one seed: no interval")
    unsure = " (the interval includes 0: no clear winner)" if s["n"] > 1 and s["lo"] <= 0 <= s["hi"] else ""
    return f"the {better} is better by {abs(s['mean']):.2f} ± {_num(s['hi'] - s['mean'])} nats ({spread}){unsure}"


def markdown(name: str, commit: str, runs: pd.DataFrame, stats: pd.DataFrame, planned: int) -> str:
    lines = [f"# Sweep `{name}`", "",
             (f"Commit `{commit[:8]}`; {len(runs)} of {planned} planned runs landed. Every number is computed from "
              "the experiments' own metrics (`dvc exp show`); across seeds: mean, sample standard deviation, and the "
              "95% t-interval of the mean. NLLs are nats per test image (lower is better); a gap is the paired "
              "per-seed difference direct - VAE. The intervals are over seeds (training and estimator randomness): "
              "every run evaluates the same test images, so the error of sampling those images is not in them; "
              "each run's `metrics/report.md` gives it (the paired interval over images)."), ""]
    for point in runs["point"].unique():
        seeds = ", ".join(map(str, sorted(runs[runs.point == point]["seed"])))
        lines += [f"## {point} (seeds {seeds})", "",
                  f"**AIS: {verdict(point, stats)}.** IWAE: {verdict(point, stats, 'iwae.gap')}.", "",
                  "| metric | mean | sd | 95% interval |", "|---|---|---|---|"]
        digits = {"knn.vae": 4, "knn.direct": 4}
        for _, s in stats[stats.point == point].iterrows():
            d = digits.get(s["metric"], 2)
            lines.append(f"| {s['label']} | {_num(s['mean'], d)} | {_num(s['sd'], d)} | "
                         f"{_num(s['lo'], d)} to {_num(s['hi'], d)} |")
        lines.append("")
    return "\n".join(lines)


def figure(runs: pd.DataFrame, stats: pd.DataFrame, keys: list[str], path: Path) -> None:
    """Each NLL and the gap against the first swept param, interval bars, one line per fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("AIS NLL", {"VAE": "ais.vae", "direct": "ais.direct"}),
              ("IWAE NLL", {"VAE": "iwae.vae", "direct": "iwae.direct"}),
              ("prior-sampling NLL", {"VAE": "prior.vae", "direct": "prior.direct"}),
              ("gap direct - VAE", {"AIS": "ais.gap", "IWAE": "iwae.gap"})]
    x_key, rest = (keys[0], keys[1:]) if keys else (None, [])
    points = runs.drop_duplicates("point")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels):
        for series_key, series in (points.groupby(rest, sort=False) if rest else [((), points)]):
            suffix = ", ".join(f"{k}={v}" for k, v in zip(rest, np.atleast_1d(series_key))) if rest else ""
            for fit, metric in lines.items():
                s = stats[stats.metric == metric].set_index("point").reindex(series["point"])
                x = series[x_key].to_numpy() if x_key else np.zeros(len(series))
                err = np.vstack([s["mean"] - s["lo"], s["hi"] - s["mean"]])
                ax.errorbar(x, s["mean"], yerr=np.nan_to_num(err), marker="o", capsize=4,
                            label=f"{fit}{' (' + suffix + ')' if suffix else ''}")
        ax.set_title(title)
        if title.startswith("gap"):
            ax.axhline(0, color="grey", lw=0.8)  # above: the VAE is better
        x_values = pd.to_numeric(points[x_key], errors="coerce") if x_key else pd.Series(dtype=float)
        if len(x_values) and x_values.notna().all() and x_values.min() > 0 and x_values.max() / x_values.min() >= 8:
            ax.set_xscale("log")  # M = 16, 64, 256 or lr = 1e-4 ... 1e-2: equal steps in log
        ax.set_xlabel(x_key or "committed params")
        if not x_key:
            ax.set_xticks([])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("nats per image (mean, 95% interval over seeds)")
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


def summarize(repo: Path, name: str, parent_run: str | None = None, tracking_uri: str | None = None) -> list[Path]:
    """Write metrics/sweeps/<name>/summary.{md,csv} and summary.png from the landed runs of the sweep's
    plan; log them to the sweep's MLflow run when given. Returns the files written."""
    out = repo / "metrics" / "sweeps" / name
    plan_file = out / "plan.json"
    if not plan_file.is_file():
        raise LatentfitError(f"no sweep named {name!r} here ({plan_file} is missing): run `latentfit sweep --name {name} "
                             "...` first, or pick one of: " + ", ".join(sorted(p.parent.name for p in
                                                                              out.parent.glob("*/plan.json"))))
    plan = json.loads(plan_file.read_text())
    runs = run_metrics(repo, plan["commit"], plan)
    if runs.empty:
        raise LatentfitError(f"no run of sweep {name!r} has landed yet: run `latentfit sweep` to run them")
    stats = statistics(runs)
    keys = list(plan["runs"][0]["point"]) if plan["runs"] else []
    md, csv, png = out / "summary.md", out / "summary.csv", out / "summary.png"
    write_text(md, markdown(name, plan["commit"], runs, stats, len(plan["runs"])))
    write_text(csv, stats.to_csv(index=False))
    write_text(out / "runs.csv", runs.to_csv(index=False))
    figure(runs, stats, keys, png)
    if parent_run and tracking_uri:
        _log(parent_run, tracking_uri, [md, csv, out / "runs.csv", png], stats)
    return [md, csv, out / "runs.csv", png]


def _log(parent_run: str, uri: str, files: list[Path], stats: pd.DataFrame) -> None:
    import mlflow

    from ..tracking import store_lock

    try:
        with store_lock(uri):
            client = mlflow.MlflowClient(uri)
            for f in files:
                client.log_artifact(parent_run, str(f), "summary")
            if stats["point"].nunique() == 1:  # one grid point: its statistics are the sweep's metrics
                for _, s in stats.iterrows():
                    for stat in ("mean", "sd", "lo", "hi"):
                        if not math.isnan(s[stat]):
                            client.log_metric(parent_run, f"{s['metric']}.{stat}", float(s[stat]))
    except Exception as err:  # noqa: BLE001 - the files are written; tracking is reported, not fatal
        print(f"warning: could not log the summary to MLflow ({str(err).splitlines()[0]})")
