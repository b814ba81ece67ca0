"""dvc.yaml's code deps are exactly what each stage imports, and imports stay narrow."""

from pathlib import Path

import yaml

from latentfit.dag import check, module_closure

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "latentfit"


def test_dvc_yaml_lists_exactly_the_modules_each_stage_imports():
    assert check(ROOT) == {}, "run `python -m latentfit.dag` and update dvc.yaml"


def stages_importing(module: str) -> set[str]:
    return {script.stem for script in (ROOT / "stages").glob("*.py")
            if PACKAGE / module in module_closure(script, PACKAGE)}


def test_a_change_reaches_only_the_stages_it_can_affect():
    assert stages_importing("prepare.py") == {"preprocess"}
    assert stages_importing("figures.py") == {"visualize"}
    assert stages_importing("ais.py") == {"evaluate"}
    assert stages_importing("training.py") == {"train_vae", "train_direct", "evaluate"}
    download = {p.name for p in module_closure(ROOT / "stages/download.py", PACKAGE)}
    assert download.isdisjoint({"training.py", "models.py", "likelihood.py"}), download


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
