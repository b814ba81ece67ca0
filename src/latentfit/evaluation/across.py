"""Paired gaps between fits from different runs (`latentfit compare`). Every `evaluate@<fit>` stage writes its
per-image NLLs (`metrics/fits/<fit>/images.csv`) and the identity of the data it scored (`scores.json`'s `data`);
two runs that scored the same data pair image by image, so
a fit of one experiment (the VAE trained by the IWAE bound, say) can be set against the fits of another without
evaluating anything again: from the workspace, or from any revision DVC knows (a commit, branch, tag or experiment
name; the file comes from DVC's cache). Pandas and numpy only: nothing here runs a model."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from latentfit.core.errors import DataError
from latentfit.core.stats import interval
from latentfit.evaluation.schema import differences

ESTIMATOR_COLUMNS = {"ais": re.compile(r"ais"), "iwae": re.compile(r"iwae_(\d+)"),
                     "prior_mc": re.compile(r"prior_mc_(\d+)")}


def read_images(path: str | Path, rev: str | None = None) -> pd.DataFrame:
    """A fit's per-image results: `path` is its `metrics/<fit>/` directory or the `images.csv` in it, in the
    workspace, or at revision `rev` (a commit, branch, tag or `dvc exp show` experiment name)."""
    path = Path(path)
    file = path if path.suffix == ".csv" else path / "images.csv"
    if rev is not None:
        frame = pd.read_csv(io.StringIO(_read_at(file, rev)))
    elif not file.is_file():
        raise DataError(f"{file} is missing: give a fit's results directory (metrics/fits/<fit>/, written by "
                        "`dvc repro evaluate@<fit>`) or its images.csv, or DIR@REV for another revision's")
    else:
        frame = pd.read_csv(file)
    missing = {"split", "image", "label", "ais"} - set(frame.columns)
    if missing:
        raise DataError(f"{file} has no column {', '.join(sorted(missing))}: it is not an evaluate stage's images.csv")
    test = frame[frame["split"] == "test"].set_index("image").sort_index()
    test.attrs["data"] = _identity(file.with_name("scores.json"), rev)
    test.attrs["source"] = f"{file.parent}{'@' + rev if rev else ''}"
    return test


def _identity(scores: Path, rev: str | None) -> dict | None:
    """The data identity a fit's scores.json records beside its images.csv (None if it records none)."""
    if rev is None and not scores.is_file():
        return None
    try:
        text = _read_at(scores, rev) if rev is not None else scores.read_text()
    except DataError:
        return None
    return json.loads(text).get("data")


def _read_at(file: Path, rev: str) -> str:
    """`file` (relative to the working directory, inside this DVC repository) as revision `rev` has it."""
    import dvc.api
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.scm import SCM, resolve_rev
    from scmrepo.exceptions import SCMError

    try:
        root = Path(Repo.find_root()).resolve()
        inside = file.resolve().relative_to(root).as_posix()
        sha = resolve_rev(SCM(str(root)), rev)  # experiment names too, which git alone does not know
        with dvc.api.open(inside, repo=str(root), rev=sha) as handle:
            return handle.read()
    except (DvcException, SCMError, ValueError, FileNotFoundError) as err:
        raise DataError(f"{file}@{rev}: {err}. Give a revision of this repository (`git log`, `dvc exp show`) whose "
                        "dvc.lock has that fit's evaluate output, and run from inside the repository") from err


def _column(frames: list[pd.DataFrame], estimator: str) -> str | None:
    """The estimator's column every frame has: its largest k (IWAE) or M (prior sampling) they share."""
    pattern = ESTIMATOR_COLUMNS[estimator]
    shared = set.intersection(*({c for c in f.columns if pattern.fullmatch(c)} for f in frames))
    return max(shared, key=lambda c: int(m[1]) if (m := pattern.fullmatch(c)) and m.groups() else 0, default=None)


def paired_gaps(fits: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Each fit against the first, per estimator, over the test images both ran it on: one row each with the
    two mean NLLs, the mean paired gap (fit - baseline: positive means the baseline is better) and its interval."""
    names = list(fits)
    if len(names) < 2:
        raise DataError("compare needs two fits or more: NAME=metrics/<fit> NAME=other-run/metrics/<fit> ...")
    base_name, base = names[0], fits[names[0]]
    rows = []
    for name in names[1:]:
        frame = fits[name]
        ours, theirs = frame.attrs.get("data"), base.attrs.get("data")
        if ours is not None and theirs is not None and ours != theirs:
            raise DataError(f"{name} ({frame.attrs.get('source')}) and {base_name} ({base.attrs.get('source')}) were "
                            f"scored on different data ({differences(theirs, ours)}): their per-image NLLs do not pair")
        common = base.index.intersection(frame.index)
        if not base.loc[common, "label"].equals(frame.loc[common, "label"]):
            raise DataError(f"{name} and {base_name} were not scored on the same test images (their labels differ): "
                            "compare runs with the same data.dataset and preprocess params")
        for estimator in ESTIMATOR_COLUMNS:
            column = _column([base, frame], estimator)
            if column is None:
                continue
            both = pd.concat([frame[column], base[column]], axis=1, keys=["fit", "base"]).dropna()
            gap = interval((both["fit"] - both["base"]).to_numpy())
            rows.append({"fit": name, "baseline": base_name, "estimator": column, "images": len(both),
                         "fit_nll": both["fit"].mean(), "baseline_nll": both["base"].mean(), "gap": gap.mean,
                         "se": gap.se, "lo": gap.lo, "hi": gap.hi})
    return pd.DataFrame(rows)


def markdown(gaps: pd.DataFrame) -> str:
    from tabulate import tabulate

    table = [[r.fit, r.baseline, r.estimator, r.images, f"{r.fit_nll:.2f}", f"{r.baseline_nll:.2f}",
              f"{r.gap:.2f} ± {r.se:.2f}", f"{r.lo:.2f} to {r.hi:.2f}"] for r in gaps.itertuples()]
    return tabulate(table, ["fit", "against", "estimator", "images", "fit NLL", "its NLL", "gap fit - against",
                            "95% interval"], tablefmt="github")
