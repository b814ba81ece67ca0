"""When does a direct fit work? For every fit of kind `direct` in a sweep: its paired AIS gap to the baseline
against log M and against its posterior's rate minus log M (a prior draw lands in a posterior of rate R with
probability about exp(-R), so M draws cover it only when log M nears R). A table, a least-squares line of the
gap on rate - log M with its residuals, and two figures, all from the summary's per-run and per-point numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tabulate import tabulate

from latentfit.core.fits import gap_key, label
from latentfit.evaluation.schema import fmt


@dataclass(frozen=True)
class Line:
    """gap = intercept + slope * (rate - log M), least squares over the grid points' means."""

    slope: float
    slope_se: float
    intercept: float
    r2: float
    residual_sd: float
    points: int


def direct_fits(runs: pd.DataFrame) -> list[str]:
    """The fits whose runs record log M (kind direct) and a gap to the baseline."""
    return [c.split(".", 1)[1] for c in runs.columns if c.startswith("log_m.")
            and f"ais.{gap_key(c.split('.', 1)[1])}" in runs.columns]


def columns(fit: str, baseline: str) -> list[str]:
    """The table's columns, named by its fits."""
    return ["point", "seeds", "gap", "gap_lo", "gap_hi", f"ais.{baseline}", f"ais.{fit}", "rate", "log_m",
            "rate_minus_log_m", "train_seconds", "baseline_train_seconds", "reaches_baseline"]


def table(runs: pd.DataFrame, stats: pd.DataFrame, fit: str, baseline: str) -> pd.DataFrame:
    """One row per grid point: the gap's mean and 95% interval over seeds, both fits' AIS NLL, the fit's
    posterior rate, log M, rate - log M, both training times, and whether the fit reaches the baseline: the
    gap's interval reaches down to 0 (it includes 0, or the fit is better)."""
    gap = f"ais.{gap_key(fit)}"
    rows = []
    for point in runs["point"].unique():
        s = stats[stats.point == point].set_index("metric")

        def mean(metric: str, s=s) -> float:
            return float(s.loc[metric, "mean"]) if metric in s.index else math.nan

        if gap not in s.index:
            continue
        g = s.loc[gap]
        rows.append({"point": point, "seeds": int(g["n"]), "gap": g["mean"], "gap_lo": g["lo"], "gap_hi": g["hi"],
                     f"ais.{baseline}": mean(f"ais.{baseline}"), f"ais.{fit}": mean(f"ais.{fit}"),
                     "rate": mean(f"rate.{fit}"), "log_m": mean(f"log_m.{fit}"),
                     "rate_minus_log_m": mean(f"rate_minus_log_m.{fit}"),
                     "train_seconds": mean(f"train_seconds.{fit}"),
                     "baseline_train_seconds": mean(f"train_seconds.{baseline}"),
                     "reaches_baseline": bool(g["lo"] <= 0) if not math.isnan(g["lo"]) else None})
    frame = pd.DataFrame(rows, columns=columns(fit, baseline))
    line = fit_line(frame)
    if line is not None:
        frame["residual"] = frame["gap"] - (line.intercept + line.slope * frame["rate_minus_log_m"])
    return frame


def fit_line(frame: pd.DataFrame) -> Line | None:
    """Least squares of the points' mean gap on their mean rate - log M (None with fewer than 3 points)."""
    from scipy import stats

    ok = frame.dropna(subset=["gap", "rate_minus_log_m"]) if len(frame) else frame
    if len(ok) < 3 or ok["rate_minus_log_m"].nunique() < 2:
        return None
    r = stats.linregress(ok["rate_minus_log_m"], ok["gap"])
    residuals = ok["gap"] - (r.intercept + r.slope * ok["rate_minus_log_m"])
    return Line(float(r.slope), float(r.stderr), float(r.intercept), float(r.rvalue**2),
                float(np.sqrt((residuals**2).sum() / (len(ok) - 2))), len(ok))


def markdown(frame: pd.DataFrame, fit: str, baseline: str) -> list[str]:
    name, base = label(fit), label(baseline)
    rows = [[p["point"], p["seeds"], f"{fmt(p['gap'])} ({fmt(p['gap_lo'])} to {fmt(p['gap_hi'])})",
             fmt(p[f"ais.{baseline}"]), fmt(p[f"ais.{fit}"]), fmt(p["rate"]), fmt(p["log_m"]),
             fmt(p["rate_minus_log_m"]), fmt(p.get("residual", math.nan)), fmt(p["train_seconds"], digits=0),
             fmt(p["baseline_train_seconds"], digits=0),
             {True: "yes", False: "no", None: "?"}[p["reaches_baseline"]]] for _, p in frame.iterrows()]
    lines = [f"## When does the {name} work?", "",
             f"Per grid point, over seeds: the paired AIS gap {name} - {base} (mean, 95% interval), both AIS NLLs, "
             f"the {name}'s posterior rate KL(p(z | y) || p(z)) on the AIS images, log M of its M training draws, "
             "rate - log M, the residual of the line below, the training times in seconds (each fit's recorded "
             f"epochs), and whether the {name} reaches the {base} (the gap's interval reaches 0). Nats per test image.", "",
             tabulate(rows, headers=["point", "seeds", "gap (95% interval)", f"AIS {base}", f"AIS {name}",
                                     "rate", "log M", "rate - log M", "residual", f"train s {name}",
                                     f"train s {base}", f"reaches the {base}"],
                      tablefmt="github", disable_numparse=True), ""]
    line = fit_line(frame)
    if line is None:
        lines += ["Too few grid points (fewer than 3) for a line of the gap on rate - log M.", ""]
    else:
        lines += [f"Least squares over the {line.points} points' means: gap = {fmt(line.intercept)} + "
                  f"{fmt(line.slope)} (± {fmt(line.slope_se)}) x (rate - log M); R² {fmt(line.r2, digits=3)}, "
                  f"residual sd {fmt(line.residual_sd)} nats.", ""]
    return lines


def series(runs: pd.DataFrame, keys: list[str], fit: str) -> list[tuple[str, list[str]]]:
    """The grid points grouped into lines: by every swept key but the fit's M, in the order they ran."""
    rest = [k for k in keys if k != f"fits.{fit}.mc_samples"]
    points = runs.drop_duplicates("point")
    if not rest:
        return [(label(fit), list(points["point"]))]
    out = []
    for value, group in points.groupby(rest, sort=False, dropna=False):
        values = value if isinstance(value, tuple) else (value,)
        text = ", ".join(f"{k.rsplit('.', 1)[-1]} = {v}" for k, v in zip(rest, values, strict=False))
        out.append((text, list(group["point"])))
    return out


def figures(runs: pd.DataFrame, frame: pd.DataFrame, keys: list[str], fit: str, baseline: str) -> dict[str, object]:
    """gap_vs_log_m: the gap against log M, a line per series; gap_vs_rate: against rate - log M, every point,
    with the least-squares line (only where the runs measured the rate: the anatomy). Bars: 95% t-intervals
    over seeds. Returns the matplotlib figures by name: none for a table without a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = frame.dropna(subset=["gap"])
    if frame.empty:
        return {}
    name, base = label(fit), label(baseline)
    y_label = f"AIS NLL gap, {name} - {base}\n(nats per test image)"
    by_point = frame.set_index("point")
    fewest, most = int(frame["seeds"].min()), int(frame["seeds"].max())
    seeds = f"{fewest}" if fewest == most else f"{fewest} to {most}"
    bars = f"bars: 95% interval over {seeds} seeds" if most > 1 else "one seed: no interval"
    first, a = plt.subplots(figsize=(6.4, 4.4))
    second, b = plt.subplots(figsize=(6.4, 4.4))
    for text, points in series(runs, keys, fit):
        s = by_point.reindex([p for p in points if p in by_point.index]).sort_values("log_m")
        err = np.nan_to_num(np.vstack([s["gap"] - s["gap_lo"], s["gap_hi"] - s["gap"]]))
        drawn = a.errorbar(s["log_m"], s["gap"], yerr=err, marker="o", capsize=4, label=text)
        b.errorbar(s["rate_minus_log_m"], s["gap"], yerr=err, marker="o", capsize=4, linestyle="none",
                   color=drawn[0].get_color(), label=text)
        for _, p in s.iterrows():
            b.annotate(f"M={round(math.exp(p['log_m']))}", (p["rate_minus_log_m"], p["gap"]), fontsize=7,
                       xytext=(4, -10), textcoords="offset points")
    ticks = sorted(frame["log_m"].dropna().unique())
    a.set_xticks(ticks, [f"{t:.2f}\nM={round(math.exp(t))}" for t in ticks])
    a.set_xlabel("log M (nats; M = prior draws in the direct fit's objective)")
    a.set_title(f"{name} against the {base}, by M ({bars})", fontsize=10)
    line = fit_line(frame)
    if line is not None:
        x = np.linspace(frame["rate_minus_log_m"].min(), frame["rate_minus_log_m"].max(), 50)
        b.plot(x, line.intercept + line.slope * x, "k--", lw=1,
               label=f"least squares: {line.intercept:.1f} + {line.slope:.2f} x (R² {line.r2:.2f})")
    b.axvline(0, color="grey", lw=0.8, ls=":")
    b.set_xlabel("posterior rate - log M (nats; rate = KL(p(z | y) || p(z)) of the direct fit)")
    b.set_title(f"Does rate - log M predict the gap? ({bars})", fontsize=10)
    for ax in (a, b):
        ax.axhline(0, color="grey", lw=0.8)  # at 0: as good as the baseline; above: the baseline is better
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for f in (first, second):
        f.tight_layout()
    if frame["rate_minus_log_m"].notna().any():
        return {"gap_vs_log_m": first, "gap_vs_rate": second}
    close(second)  # no rate measured (evaluate.anatomy: false): nothing to plot against it
    return {"gap_vs_log_m": first}


def close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)
