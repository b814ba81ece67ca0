"""A sweep's runs: `-S key=v1,v2` grids (the syntax of `dvc exp run -S`) times training seeds, each
run a DVC experiment with a deterministic name, checked against params.yaml before anything runs."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from latentfit.core.config import parse_params
from latentfit.core.errors import ParamsError

# The params a replicate changes: every fit's training seed (`fits.<fit>.seed`, from params.yaml's fits), and the
# seeds of the estimators and figures computed from them, so replicates share no random draw.
SHARED_SEED_KEYS = ("evaluate.seed", "visualize.seed")


def seed_keys(params: dict[str, Any]) -> tuple[str, ...]:
    """The seeds a replicate sets, for the fits of `params` (params.yaml as parsed YAML)."""
    return (*(f"fits.{name}.seed" for name in params.get("fits") or {}), *SHARED_SEED_KEYS)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Run:
    """One point of the grid with one seed: a DVC experiment."""

    name: str
    point: tuple[tuple[str, Any], ...]  # the swept values, in the order of the -S options
    seed: int
    fixed: tuple[tuple[str, Any], ...] = field(default=())  # -S key=value options with one value
    seeds: tuple[str, ...] = SHARED_SEED_KEYS  # the seed params a replicate sets (seed_keys of its params)

    @property
    def overrides(self) -> dict[str, Any]:
        """Every param this run sets on top of the committed params.yaml."""
        return dict(self.fixed) | dict(self.point) | dict.fromkeys(self.seeds, self.seed)

    @property
    def point_label(self) -> str:
        return point_label(self.point)

    def set_args(self) -> list[str]:
        """`-S key=value` options for `dvc exp run`; a seed as `++key=value`, which Hydra adds where a fit's
        entry leaves its seed to the default."""
        return [arg for k, v in self.overrides.items()
                for arg in ("-S", f"{'++' if k in self.seeds else ''}{k}={format_value(v)}")]


def point_label(point: Iterable[tuple[str, Any]]) -> str:
    """A grid point as MLflow's `sweep_point` tag and the summary name it: `model.z_dim=2,fits.vae.lr=0.001`."""
    return ",".join(f"{k}={format_value(v)}" for k, v in point) or "default"


def format_value(value: Any) -> str:
    """A value as `-S` reads it back: lists in brackets, booleans in lower case."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def parse_set(option: str) -> tuple[str, list[Any]]:
    """`-S model.z_dim=2,5,20` -> ('model.z_dim', [2, 5, 20]), parsed by the Hydra override grammar that
    `dvc exp run -S` uses: lists in brackets, `range(a,b[,step])` (end excluded), `choice(...)`."""
    from dvc.utils.hydra import to_hydra_overrides

    key, sep, text = option.partition("=")
    if not sep or not key.strip() or not text.strip():
        raise ParamsError(f"-S {option!r}: write -S section.key=value or -S section.key=v1,v2,v3")
    try:
        [override] = to_hydra_overrides([f"{key.strip()}={text.strip()}"])
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
    except Exception as err:  # noqa: BLE001 - Hydra's parse errors: one message for every kind
        raise ParamsError(f"-S {option!r}: {err}") from None
    if not values:
        raise ParamsError(f"-S {option!r} gives no values")
    if len(set(map(format_value, values))) < len(values):
        raise ParamsError(f"-S {option!r} repeats a value")
    return override.key_or_group, values


def parse_seeds(text: str) -> list[int]:
    """`0-4` -> [0, 1, 2, 3, 4]; `0,3,7` -> [0, 3, 7]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            low, dash, high = part.strip().partition("-")
            seeds += list(range(int(low), int(high) + 1)) if dash else [int(low)]
    except ValueError:
        raise ParamsError(f"--seeds {text!r}: write a range such as 0-4 or a list such as 0,1,2") from None
    if not seeds or len(set(seeds)) < len(seeds) or min(seeds) < 0:
        raise ParamsError(f"--seeds {text!r}: give distinct non-negative seeds, such as 0-4")
    return seeds


def _short_keys(keys: list[str]) -> dict[str, str]:
    """The last part of each key for run names, the whole key where two swept keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=False)}


def run_name(sweep: str, point: tuple[tuple[str, Any], ...], seed: int, short: dict[str, str]) -> str:
    parts = [sweep] + [f"{short[k]}={format_value(v)}" for k, v in point] + [f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9_.=,-]", "_", "-".join(parts))


def grid_points(sets: list[str]) -> list[dict[str, Any]]:
    """Every combination of the `-S` options, expanded by DVC's own `get_hydra_sweeps` (what `dvc exp
    run -S` queues with), each as {key: value}."""
    from dvc.utils.hydra import get_hydra_sweeps, to_hydra_overrides

    options = [f"{key.strip()}={text.strip()}" for key, _, text in (o.partition("=") for o in sets)]
    combos = get_hydra_sweeps({"params.yaml": options})
    return [{o.key_or_group: o.value() for o in to_hydra_overrides(combo["params.yaml"])} for combo in combos]


def plan(sweep: str, sets: list[str], seeds: list[int], params: dict[str, Any]) -> list[Run]:
    """Every run of the sweep, each checked against `params` (the committed params.yaml, parsed) with
    its overrides applied: a bad key or value raises ParamsError naming the option, before anything runs."""
    if not _NAME.match(sweep):
        raise ParamsError(f"--name {sweep!r}: use letters, digits, '.', '_' and '-' (a git ref name part)")
    parsed = [parse_set(option) for option in sets]
    keys = [k for k, _ in parsed]
    if len(set(keys)) < len(keys):
        raise ParamsError(f"-S sets one key twice: {', '.join(sorted({k for k in keys if keys.count(k) > 1}))}")
    seeds_set = seed_keys(params)
    if clash := set(keys) & set(seeds_set):
        raise ParamsError(f"-S {min(clash)}: seeds are swept with --seeds, which sets {', '.join(seeds_set)}")
    swept = [(k, v) for k, v in parsed if len(v) > 1]
    fixed = tuple((k, v[0]) for k, v in parsed if len(v) == 1)
    short = _short_keys([k for k, _ in swept])
    runs = []
    for values in grid_points(sets):  # the points `dvc exp run -S` would queue, in its order
        point = tuple((k, values[k]) for k, _ in swept)
        for seed in seeds:
            runs.append(Run(run_name(sweep, point, seed, short), point, seed, fixed, seeds_set))
    for run in runs[:: len(seeds)]:  # one check per grid point: seeds are always valid
        check_overrides(params, run.overrides, seeds_set)
    return runs


def check_overrides(params: dict[str, Any], overrides: dict[str, Any], added: Iterable[str] = ()) -> None:
    """Apply `overrides` to a copy of `params` and validate the result as the stages will; the keys `added` may
    be missing from `params` (a fit's seed left to its default)."""
    merged = copy.deepcopy(params)
    for key, value in overrides.items():
        node, parts = merged, key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ParamsError(f"-S {key}: params.yaml has no section '{part}'"
                                  f" (sections: {', '.join(k for k, v in merged.items() if isinstance(v, dict))})")
            node = node[part]
        if parts[-1] not in node and key not in added:
            raise ParamsError(f"-S {key}: params.yaml has no key '{parts[-1]}' in '{'.'.join(parts[:-1]) or 'the top level'}'"
                              f" (keys there: {', '.join(node)})")
        node[parts[-1]] = value
    try:
        parse_params(merged)
    except ParamsError as err:
        raise ParamsError(f"-S {format_overrides(overrides)}: {err}") from None


def format_overrides(overrides: dict[str, Any]) -> str:
    return " ".join(f"{k}={format_value(v)}" for k, v in overrides.items()
                    if k not in SHARED_SEED_KEYS and not (k.startswith("fits.") and k.endswith(".seed")))
