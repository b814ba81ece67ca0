"""dvc.yaml's code deps are exactly what each stage imports, its params exactly what each stage reads, and
imports stay narrow."""

from pathlib import Path

import pytest
import yaml

from latentfit.core.config import ParamsError, parse_params
from latentfit.dag import check, check_params, module_closure

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "latentfit"


def test_dvc_yaml_lists_exactly_the_modules_each_stage_imports():
    assert check(ROOT) == {}, "run `python -m latentfit.dag` and update dvc.yaml"


def test_dvc_yaml_lists_exactly_the_params_each_stage_reads():
    assert check_params(ROOT) == {}, "run `python -m latentfit.dag` and update dvc.yaml or the stage's READS"


def test_the_params_check_catches_a_param_read_but_not_listed(tmp_path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages/one.py").write_text('READS = ("data.dataset", "evaluate")\n')
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"one": {"cmd": "x", "params": ["evaluate"]}}}))
    assert check_params(tmp_path) == {"one": (["evaluate"], ["data.dataset", "evaluate"])}


def test_a_stage_reading_an_undeclared_param_fails_naming_it():
    view = parse_params({}).reading(("data.dataset", "evaluate.seed", "device"), "visualize")
    assert view.data.dataset == "mnist" and view.evaluate.seed == 0 and view.device == "auto"
    assert view.tracking.experiment == "latentfit"  # where results are logged, not what they are
    for read in (lambda: view.data.mirrors, lambda: view.evaluate.ais_steps, lambda: view.model):
        with pytest.raises(ParamsError, match=r"stage visualize reads (data.mirrors|evaluate.ais_steps|model) without "
                                              r"declaring it: add .* to READS in stages/visualize.py"):
            read()


EVERY = {"download", "preprocess", "train", "reference", "likelihood", "figure_data", "evaluate", "visualize"}
BLOCKS = {"likelihood", "figure_data", "evaluate"}  # a fit's evaluation, stage by stage
SCORED = {"likelihood", "evaluate"}  # the stages whose numbers are the fit's scores (evaluate@<fit> merges them)
# Where code lives decides what re-runs: each module, and the stages whose code it is. A module that
# reaches more stages than this re-runs stages it cannot affect; a new module must say where it belongs.
MODEL = {"train", "reference", "visualize"} | BLOCKS  # visualize: through the registry's models
INTENDED = {
    "__init__.py": EVERY,
    # core: every stage's runtime, params, files and tracking; statistics where numbers are compared
    **{f"core/{m}.py": EVERY for m in ("__init__", "config", "errors", "io", "runtime")},
    "core/tracking.py": EVERY - {"likelihood", "figure_data"},  # evaluate@<fit> logs the fit's evaluation
    "core/stats.py": {"reference", "visualize"} | SCORED,
    "core/fits.py": {"train", "reference", "visualize"} | SCORED,  # labels, registry names
    # data
    "data/__init__.py": {"download", "preprocess"}, "data/sources.py": {"download"},
    "data/idx.py": {"download", "preprocess"}, "data/prepare.py": {"preprocess"},
    # model
    "model/__init__.py": MODEL, "model/networks.py": MODEL,
    "model/likelihood.py": {"train", "reference"} | BLOCKS,
    "model/files.py": {"train"} | BLOCKS,
    "model/registry.py": {"train", "visualize"},  # log and register; the final stage links and ranks
    # fitting: the blocks load the post-hoc encoder (fitting.posthoc, which slices batches with loops)
    "fitting/__init__.py": {"train", "reference"} | BLOCKS, "fitting/loops.py": {"train", "reference"} | BLOCKS,
    "fitting/checkpoint.py": {"train"}, "fitting/train.py": {"train"},
    "fitting/posthoc.py": {"reference"} | BLOCKS,  # the feature classifier, the post-hoc encoders
    # inference: the math on a fitted decoder, each where its block runs it
    "inference/__init__.py": BLOCKS, "inference/ais.py": {"likelihood", "evaluate"},
    "inference/estimators.py": {"likelihood", "evaluate"}, "inference/diagnostics.py": {"evaluate"},
    "inference/reconstruct.py": {"evaluate", "figure_data"},
    # evaluation: a module per part, the parts' shared plumbing, the merge, the comparison
    "evaluation/__init__.py": {"reference", "visualize"} | BLOCKS,
    "evaluation/reference.py": {"reference"} | SCORED,  # the data's own numbers; the Frechet distance
    "evaluation/schema.py": {"reference", "visualize"} | SCORED,
    "evaluation/metrics.py": {"reference", "visualize"} | SCORED,  # the registry the schema reads
    "evaluation/anatomy_records.py": {"reference", "visualize"} | SCORED,
    "evaluation/blocks.py": BLOCKS, "evaluation/likelihoods.py": {"likelihood", "evaluate"},
    "evaluation/anatomy.py": {"evaluate"}, "evaluation/structure.py": {"evaluate"},
    "evaluation/merge.py": {"evaluate"}, "evaluation/compare.py": {"visualize"},
    "evaluation/across.py": set(),  # `latentfit compare`, between runs: no stage
    # visualize: the figure arrays are computed where the fit's model is loaded (figure_data@<fit>)
    "visualize/__init__.py": {"figure_data", "visualize"}, "visualize/arrays.py": {"figure_data"},
    **{f"visualize/{m}.py": {"visualize"} for m in ("report", "panels", "drawing")},
    # above the pipeline: no stage runs them
    "dag.py": set(), "cli.py": set(), "ui.py": set(),
    **{f"sweep/{name}.py": set() for name in ("__init__", "spec", "grid", "repo", "order", "worker", "mlflow_runs",
                                              "driver", "summary", "records", "study")},
}


def test_every_per_fit_stage_iterates_over_params_fits():
    """A fit is a params.yaml entry alone: every per-fit stage is a `foreach: ${fits}` group, and the final stage
    reads every fit's results through their parent directories, so no fit is named in dvc.yaml."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert {name for name, stage in stages.items() if "foreach" in stage} == {"train"} | BLOCKS
    assert all(stages[name]["foreach"] == "${fits}" for name in {"train"} | BLOCKS)
    assert {"metrics/fits", "evaluation", "plots/train"} <= set(stages["visualize"]["deps"])
    text = yaml.safe_dump(yaml.safe_load((ROOT / "dvc.yaml").read_text()))  # without the comments
    assert "vae" not in text and "direct" not in text, "dvc.yaml names a fit"


def test_each_module_reaches_exactly_its_intended_stages():
    closures = {script.stem: module_closure(script, PACKAGE) for script in (ROOT / "stages").glob("*.py")}
    actual = {str(m.relative_to(PACKAGE)): {stage for stage, reached in closures.items() if m in reached}
              for m in PACKAGE.rglob("*.py")}
    assert set(actual) == set(INTENDED), "a module was added or removed: give it its stage set in INTENDED"
    wrong = {m: sorted(actual[m]) for m in actual if actual[m] != INTENDED[m]}
    assert not wrong, f"modules reaching other stages than intended: {wrong}"


def test_every_stage_imports_its_own_checkouts_package():
    """A stage puts its checkout's src/ first on sys.path before importing latentfit, so a queued or
    --temp experiment computes with the code its snapshot holds, not with an installed checkout's."""
    line = 'sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))'
    for script in (ROOT / "stages").glob("*.py"):
        text = script.read_text()
        assert line in text and text.index(line) < text.index("from latentfit"), script.name


def test_subpackages_are_followed(tmp_path):
    package = tmp_path / "src/latentfit"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "sub/__init__.py", "top.py", "sub/deep.py"):
        (package / name).write_text("")
    (package / "sub/leaf.py").write_text("from .. import top\nfrom .deep import x\n")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages/one.py").write_text("from latentfit.sub import leaf\n")
    reached = {str(p.relative_to(package)) for p in module_closure(tmp_path / "stages/one.py", package)}
    assert reached == {"__init__.py", "sub/__init__.py", "sub/leaf.py", "sub/deep.py", "top.py"}


def test_the_check_catches_a_missing_and_a_stray_dependency(tmp_path):
    package = tmp_path / "src/latentfit"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import thing\n")
    (package / "b.py").write_text("thing = 1\n")
    (package / "c.py").write_text("")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages/one.py").write_text("def main():\n    from latentfit.a import thing\n")
    deps = ["stages/one.py", "src/latentfit/__init__.py", "src/latentfit/a.py", "src/latentfit/c.py", "data/x"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"one": {"cmd": "python stages/one.py",
                                                                          "deps": deps}}}))
    listed, expected = check(tmp_path)["one"]
    assert set(expected) - set(listed) == {"src/latentfit/b.py"}  # reached through a.py, inside a function
    assert set(listed) - set(expected) == {"src/latentfit/c.py"}
