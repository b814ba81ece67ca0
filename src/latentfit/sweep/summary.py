"""Seed statistics of a sweep, read from its experiments' own metrics (the files DVC committed for each):
for every grid point, across seeds, the mean, standard deviation and 95% t-interval of the headline
metrics, and of the paired per-seed gap direct - VAE. Written as Markdown, CSV and a figure."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from latentfit.core.errors import LatentfitError
from latentfit.core.fits import BASELINE, baseline_of, label
from latentfit.core.io import save_figure, write_text
from latentfit.evaluation.schema import Details, Interval, fmt, interval, summary_metrics, verdict
from latentfit.sweep import study
from latentfit.sweep.grid import point_label
from latentfit.sweep.records import RunRecords, read_records, stage_costs
from latentfit.sweep.repo import exp_ref, landed
from latentfit.sweep.spec import reported


def seed_statistics(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation and the 95% t-interval of the mean over seeds (NaN with one seed)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return {"n": len(x), "mean": float(x.mean()), "sd": math.nan, "lo": math.nan, "hi": math.nan}
    s = interval(x)
    return {"n": len(x), "mean": s.mean, "sd": float(x.std(ddof=1)), "lo": s.lo, "hi": s.hi}


def run_metrics(repo: Path, commit: str, plan: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, RunRecords]]:
    """One row per landed run: its grid point, seed and summary metrics, read from the comparison's numbers its
    experiment holds (through DVC, with the schema that wrote them), and the study's columns derived from its
    own params and records (log M, rate - log M, training times). The metrics' labels are in
    `.attrs["labels"]`; the runs' records (params, stage times) come beside the table."""
    present = landed(repo, commit)
    rows, labels, records = [], {}, {}
    for run in plan["runs"]:
        if run["name"] not in present:
            continue
        records[run["name"]] = read_records(repo, exp_ref(commit, run["name"]))
        found = records[run["name"]].comparison
        details = Details.from_dict(found) if found else None
        row = {"run": run["name"], "point": point_label(run["point"].items()), **run["point"], "seed": run["seed"]}
        if details is not None:
            for metric, (text, read) in summary_metrics(details).items():
                value = read(details)
                row[metric], labels[metric] = math.nan if value is None else float(value), text
        rate = {fit: row[f"rate.{fit}"] for fit in records[run["name"]].params.get("fits") or {}
                if not math.isnan(row.get(f"rate.{fit}", math.nan))}
        for metric, (text, value) in records[run["name"]].derived(rate).items():
            row[metric], labels[metric] = value, text
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs["labels"] = labels
    return frame, records


def statistics(runs: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per grid point and metric, with n, mean, sd and the 95% interval."""
    rows = []
    for point, group in runs.groupby("point", sort=False):
        for metric, text in runs.attrs.get("labels", {}).items():
            values = group[metric].dropna().tolist()
            if values:
                rows.append({"point": point, "metric": metric, "label": text, **seed_statistics(values)})
    return pd.DataFrame(rows)


def point_verdict(point: str, stats: pd.DataFrame, metric: str = "ais.gap") -> str:
    s = stats[(stats.point == point) & (stats.metric == metric)]
    if s.empty:
        return f"{point}: no {metric} landed"
    row = s.iloc[0]
    n = int(row["n"])
    if n < 2:
        gap = Interval(row["mean"], 0.0, row["mean"], row["mean"], n)
    else:
        gap = Interval(row["mean"], row["sd"] / math.sqrt(n), row["lo"], row["hi"], n)
    sentence, _ = verdict(gap, f"{n} seeds, sd {fmt(row['sd'])}" if n > 1 else "one seed")
    return sentence


def markdown(name: str, commit: str, runs: pd.DataFrame, stats: pd.DataFrame, planned: int,
             studies: list[str] | None = None, costs: list[dict[str, Any]] | None = None) -> str:
    lines = [f"# Sweep `{name}`", "",
             (f"Commit `{commit[:8]}`; {len(runs)} of {planned} planned runs landed. Every number is computed from "
              "the experiments' own metrics (`dvc exp show`); across seeds: mean, sample standard deviation, and the "
              "95% t-interval of the mean. NLLs are nats per test image (lower is better); a gap is the paired "
              "per-seed difference direct - VAE. The intervals are over seeds (training and estimator randomness): "
              "every run evaluates the same test images, so the error of sampling those images is not in them; "
              "each run's `metrics/report.md` gives it (the paired interval over images)."), ""]
    lines += studies or []
    for point in runs["point"].unique():
        seeds = ", ".join(map(str, sorted(runs[runs.point == point]["seed"])))
        lines += [f"## {point} (seeds {seeds})", "",
                  f"**AIS: {point_verdict(point, stats)}.** IWAE: {point_verdict(point, stats, 'iwae.gap')}.", ""]
        digits = {"knn.vae": 4, "knn.direct": 4}
        rows = [[s["label"], fmt(s["mean"], digits=d), fmt(s["sd"], digits=d),
                 f"{fmt(s['lo'], digits=d)} to {fmt(s['hi'], digits=d)}"]
                for _, s in stats[stats.point == point].iterrows() for d in [digits.get(s["metric"], 2)]]
        lines += [tabulate(rows, headers=["metric", "mean", "sd", "95% interval"], tablefmt="github",
                           disable_numparse=True), ""]
    if costs:
        total = sum(c["seconds"] for c in costs)
        lines += ["## What it cost", "",
                  (f"Seconds of each per-fit stage as the runs recorded them (training: the sum of its epochs; an "
                   f"evaluation stage: its parts' `part.json`), {total:.0f} s in all. A stage DVC restored from the run cache counts once: "
                   "`computed` is how many distinct results the runs hold, `runs` how many runs used one."), "",
                  tabulate([[c["stage"], c["computed"], c["runs"], f"{c['seconds']:.0f}", f"{c['mean_seconds']:.1f}"]
                            for c in costs], headers=["stage", "computed", "runs", "seconds", "seconds each"],
                           tablefmt="github", disable_numparse=True), ""]
    return "\n".join(lines)


def figure(runs: pd.DataFrame, stats: pd.DataFrame, keys: list[str], path: Path) -> None:
    """Each NLL and the gap against the first swept param, interval bars, one line per fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(stats["metric"].unique()) if len(stats) else []
    fits = [m.split(".", 1)[1] for m in metrics if m.startswith("ais.") and not m.startswith("ais.gap")]
    gaps = [m for m in metrics if m.split(".", 1)[1].startswith("gap")]
    panels = [("AIS NLL", {label(f): f"ais.{f}" for f in fits}), ("IWAE NLL", {label(f): f"iwae.{f}" for f in fits}),
              ("prior-sampling NLL", {label(f): f"prior.{f}" for f in fits}),
              (f"gap to the {label(BASELINE)}", {m: m for m in gaps})]
    x_key, rest = (keys[0], keys[1:]) if keys else (None, [])
    points = runs.drop_duplicates("point")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels, strict=False):
        for series_key, series in (points.groupby(rest, sort=False) if rest else [((), points)]):
            suffix = ", ".join(f"{k}={v}" for k, v in zip(rest, np.atleast_1d(series_key), strict=False)) if rest else ""
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
    runs, records = run_metrics(repo, plan["commit"], plan)
    if runs.empty:
        raise LatentfitError(f"no run of sweep {name!r} has landed yet: run `latentfit sweep` to run them")
    stats = statistics(runs)
    keys = list(plan["runs"][0]["point"]) if plan["runs"] else []
    md, csv, png = out / "summary.md", out / "summary.csv", out / "summary.png"
    fits = list(next(iter(records.values())).params.get("fits") or {}) if records else []
    baseline = baseline_of(fits) if fits else BASELINE
    sections, drawn = [], []
    direct = study.direct_fits(runs)
    for fit in direct:
        table = study.table(runs, stats, fit, baseline)
        if table.empty:  # no grid point with a gap (every run's AIS failed): nothing to study
            continue
        sections += study.markdown(table, fit, baseline)
        figures = study.figures(runs, table, keys, fit, baseline)
        try:
            for figure_name, fig in figures.items():
                drawn.append(out / f"{'' if len(direct) == 1 else fit + '_'}{figure_name}.png")
                save_figure(drawn[-1], fig)
        finally:
            for fig in figures.values():
                study.close(fig)
    write_text(md, markdown(name, plan["commit"], runs, stats, len(plan["runs"]), sections, stage_costs(records)))
    write_text(csv, stats.to_csv(index=False))
    write_text(out / "runs.csv", runs.to_csv(index=False))
    figure(runs, stats, keys, png)
    written = [md, csv, out / "runs.csv", png, *drawn]
    if parent_run and tracking_uri:
        _log(parent_run, tracking_uri, written, stats)
    return written


def _log(parent_run: str, uri: str, files: list[Path], stats: pd.DataFrame) -> None:
    import mlflow

    from latentfit.core.tracking import store_lock

    with reported("could not log the summary to MLflow"), store_lock(uri):
        client = mlflow.MlflowClient(uri)
        for f in files:
            client.log_artifact(parent_run, str(f), "summary")
        if stats["point"].nunique() == 1:  # one grid point: its statistics are the sweep's metrics
            for _, s in stats.iterrows():
                for stat in ("mean", "sd", "lo", "hi"):
                    if not math.isnan(s[stat]):
                        client.log_metric(parent_run, f"{s['metric']}.{stat}", float(s[stat]))
