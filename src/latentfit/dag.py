"""Stage code dependencies from the imports: `python -m latentfit.dag` checks that each stage of
dvc.yaml lists exactly the package modules its script imports (directly or through other package
modules), and prints the lists to paste where they disagree.

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


def _imported_modules(path: Path, package_dir: Path) -> set[Path]:
    """Package modules that the file at `path` imports, directly."""
    tree, found = ast.parse(path.read_text(), filename=str(path)), set()
    in_package = path.parent == package_dir
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1 and in_package:  # from .x import y / from . import x
                base = [node.module] if node.module else [alias.name for alias in node.names]
                names = [f"{PACKAGE}.{b}" for b in base]
            elif node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] != PACKAGE:
                continue
            found.add(package_dir / "__init__.py")
            if len(parts) > 1 and (package_dir / f"{parts[1]}.py").is_file():
                found.add(package_dir / f"{parts[1]}.py")
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


def check(root: str | Path = ".") -> dict[str, tuple[list[str], list[str]]]:
    """Per stage of dvc.yaml whose code deps disagree with its imports: (listed, expected) source files."""
    root = Path(root)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    package_dir = root / "src" / PACKAGE
    problems = {}
    for name, stage in stages.items():
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
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
