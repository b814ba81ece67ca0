"""Stage dependencies from the code: `python -m latentfit.dag` checks that each stage of dvc.yaml lists
exactly the package modules its script imports (directly or through other package modules), and exactly
the params its script declares it reads (`READS`, which the script's params view enforces: a read of
anything else fails), and prints the lists to paste where they disagree.

An import is read from the source (ast), not executed, so the check is cheap and sees imports inside
functions too. DVC re-runs a stage when one of its deps changes: a module missing from the list is a
change that silently leaves stale outputs, a module listed but never imported is a needless re-run.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import yaml

PACKAGE = "latentfit"


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_files(name: str, src: Path) -> set[Path]:
    """The files that importing `name` runs: every package __init__ on the way, and the module itself."""
    parts, found = name.split("."), set()
    for depth in range(1, len(parts) + 1):
        base = src.joinpath(*parts[:depth])
        if (base / "__init__.py").is_file():
            found.add(base / "__init__.py")
        elif base.with_suffix(".py").is_file():
            found.add(base.with_suffix(".py"))
        else:
            break  # `from pkg import name` where name is not a module: the rest is not a file
    return found


def _imported_modules(path: Path, package_dir: Path) -> set[Path]:
    """Package modules (of any subpackage) that the file at `path` imports, directly."""
    src = package_dir.parent
    inside = path.resolve().is_relative_to(package_dir.resolve())
    here = _module_name(path, src).split(".") if inside else []
    is_package = path.name == "__init__.py"
    tree, found = ast.parse(path.read_text(), filename=str(path)), set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the file's package, `level - 1` packages up
                if not inside:
                    continue
                package = here if is_package else here[:-1]
                base = ".".join(package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] == PACKAGE:
                found |= _module_files(name, src)
    return found


def module_closure(script: str | Path, package_dir: str | Path) -> set[Path]:
    """Every package module that running `script` imports, directly or through other package modules."""
    package_dir = Path(package_dir)
    todo, seen = list(_imported_modules(Path(script), package_dir)), set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_imported_modules(module, package_dir) - seen)
    return seen


def declared_reads(script: str | Path) -> list[str]:
    """The stage script's READS: the params it declares it reads (a literal tuple of dotted keys)."""
    tree = ast.parse(Path(script).read_text(), filename=str(script))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "READS" for t in node.targets):
            return sorted(ast.literal_eval(node.value))
    raise ValueError(f"{script} declares no READS: the params it reads, as a tuple of dotted keys")


def check_params(root: str | Path = ".") -> dict[str, tuple[list[str], list[str]]]:
    """Per stage whose dvc.yaml params disagree with its script's READS: (listed, declared)."""
    root = Path(root)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    problems = {}
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        listed = sorted(str(p) for p in stage.get("params", []))
        declared = declared_reads(root / "stages" / f"{name}.py")
        if listed != declared:
            problems[name] = (listed, declared)
    return problems


def check(root: str | Path = ".") -> dict[str, tuple[list[str], list[str]]]:
    """Per stage of dvc.yaml whose code deps disagree with its imports: (listed, expected) source files."""
    root = Path(root)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    package_dir = root / "src" / PACKAGE
    problems = {}
    for name, stage in stages.items():
        stage = stage.get("do", stage)  # a `foreach` stage (evaluate@<fit>): every item runs the same script
        script = root / "stages" / f"{name}.py"
        expected = sorted([f"stages/{name}.py"] + [str(p.relative_to(root)) for p in module_closure(script, package_dir)])
        listed = sorted(d for d in stage.get("deps", []) if str(d).endswith(".py"))
        if listed != expected:
            problems[name] = (listed, expected)
    return problems


def main() -> int:
    problems = check()
    for stage, (listed, expected) in problems.items():
        print(f"stage {stage}: dvc.yaml lists {len(listed)} source files, its imports reach {len(expected)}")
        for path in sorted(set(listed) - set(expected)):
            print(f"  - {path}  (listed, never imported)")
        for path in sorted(set(expected) - set(listed)):
            print(f"  + {path}  (imported, not listed)")
    if problems:
        print("Fix: make each stage's .py deps in dvc.yaml exactly the lists above.")
    params = check_params()
    for stage, (listed, declared) in params.items():
        print(f"stage {stage}: dvc.yaml params {listed}, but stages/{stage}.py READS {declared}")
    if params:
        print("Fix: make each stage's params in dvc.yaml its READS (a param it reads undeclared does not re-run it).")
    return 1 if problems or params else 0


if __name__ == "__main__":
    sys.exit(main())
