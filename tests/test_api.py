"""The package's shape: a lazy public API that type checkers see whole, and imports that run one
way down the data's journey (stats -> probe -> dataset -> sources -> curves -> predict -> report
-> pipeline -> run/cli), with the kernels importing only the statistics' leaf module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import massact

ROOT = Path(massact.__file__).resolve().parent
KERNELS = ROOT.parent / "kernels"
ORDER = ["stats", "probe", "dataset", "sources", "curves", "predict", "report", "pipeline"]
TOP_LEVEL = {"__init__.py", "__main__.py", "run.py", "cli.py", "pipeline.py"}


def _stage(module: str) -> str:
    """'massact.curves._fit' -> 'curves'; 'massact.run' -> 'run'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of the massact modules imported by the file (at any depth in it)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            if node.module is None:  # from . import x
                found |= {f"{name}.{a.name}" for a in node.names}
            else:
                found.add(name)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {n for n in found if n == "massact" or n.startswith("massact.")}


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        yield path, ".".join(p for p in rel.parts if p != "__init__")


def test_top_level_holds_only_the_entry_points_and_the_stage_packages():
    files = {p.name for p in ROOT.glob("*.py")}
    assert files == TOP_LEVEL
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(ORDER[:-1])


def test_imports_run_one_way_down_the_journey():
    rank = {name: i for i, name in enumerate(ORDER)}
    rank |= {"run": 8, "cli": 9, "__main__": 10, "": 10}  # cli wraps run; __main__ wraps cli
    bad = []
    for path, module in _modules():
        if path.name == "__init__.py" and module == "massact":
            continue  # the lazy re-export table names every stage
        own = _stage(module)
        for target in _imports(path, module):
            other = _stage(target)
            if other == "kernels":
                if own != "stats":
                    bad.append(f"{module} -> {target}: only massact.stats launches the kernels")
            elif other != own and rank.get(other, 9) >= rank[own]:
                bad.append(f"{module} -> {target}")
    assert not bad, "imports against the journey:\n" + "\n".join(bad)


def test_kernels_import_only_the_stats_leaf():
    for path in KERNELS.glob("*.py"):
        targets = _imports(path, f"massact.kernels.{path.stem}")
        outside = {t for t in targets if not t.startswith("massact.kernels")}
        assert outside <= {"massact.stats._result"}, (path.name, targets)


def test_every_public_name_resolves_and_type_checkers_see_it():
    tree = ast.parse((ROOT / "__init__.py").read_text())
    checked = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for stmt in node.body:
                checked |= {a.asname or a.name for a in stmt.names}
    assert checked == set(massact.__all__)
    for name in massact.__all__:
        assert getattr(massact, name) is not None


def test_import_is_cheap():
    code = "import sys, massact; print(sorted(m for m in ('jax', 'transformers', 'torch', "
    code += "'triton') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
