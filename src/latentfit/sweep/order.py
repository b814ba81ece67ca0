"""Which runs of a sweep wait for which: runs that agree on a stage's params (and those of every stage
upstream of it, as DVC's stage graph says) compute the same outputs for it, so one computes the stage
and the others, started after it, take it from DVC's run cache."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from latentfit.sweep.grid import Run


def stage_params(repo: Path) -> dict[str, set[str]]:
    """For each stage of the repository's pipeline, the params (sections or dotted keys) of the stage and of
    every stage upstream of it, from the stage graph DVC builds."""
    import networkx as nx
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        graph = dvc_repo.index.graph  # an edge runs from a stage to a stage whose outputs it reads
        own = {stage: {key for dep in stage.deps if isinstance(dep, ParamsDependency) for key in dep.params}
               for stage in graph.nodes}
        return {stage.name: set().union(own[stage], *(own[up] for up in nx.descendants(graph, stage)))
                for stage in graph.nodes if getattr(stage, "name", None)}


def leaders(runs: list[Run], closure: dict[str, set[str]]) -> dict[str, list[str]]:
    """For each run, the earlier runs that compute one of its stages with the same params. It starts
    after them and takes that stage from the run cache (in a z_dim x M grid, train@vae runs once per
    z_dim and seed). A stage that every run shares is left alone: nobody would start; so is one no model
    param reaches (download, preprocess, the reference stage: cheap next to a run, which would wait whole)."""

    def relevant(key: str, params: set[str]) -> bool:
        return any(key == p or key.startswith(p + ".") for p in params)

    def fits_a_model(params: set[str]) -> bool:
        return any(p.split(".")[0] in ("model", "fits") for p in params)

    groups: dict[tuple, list[str]] = defaultdict(list)
    for run in runs:
        for stage, params in closure.items():
            if not fits_a_model(params):
                continue
            signature = tuple(sorted((k, json.dumps(v)) for k, v in run.overrides.items() if relevant(k, params)))
            groups[(stage, signature)].append(run.name)
    waits: dict[str, list[str]] = {run.name: [] for run in runs}
    for members in groups.values():
        if 1 < len(members) < len(runs):
            for follower in members[1:]:
                if members[0] not in waits[follower]:
                    waits[follower].append(members[0])
    return waits
