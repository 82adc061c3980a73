"""The package layers: imports point one way, core stays torch-free, nothing is imported by name at run time.

    bioflexnet      (CLI, pipeline)      may import   analysis, sim, training, core
    analysis        (robustness, ...)    may import   training, core
    sim             (Brian2)             may import   core
    training        (PyTorch)            may import   core
    core            (numpy, xarray)      may import   nothing of the project
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "core": set(),
    "training": {"core"},
    "sim": {"core"},
    "analysis": {"core", "training"},
    "bioflexnet": {"core", "training", "sim", "analysis"},
}
PROJECT = set(ALLOWED)


def project_imports(path: Path) -> set[tuple[str, int]]:
    """Every project package a module imports (at any depth: lazy imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        found |= {(n.split(".")[0], node.lineno) for n in names if n.split(".")[0] in PROJECT}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_only(package):
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {target}"
             for path in sorted((ROOT / package).rglob("*.py"))
             for target, line in project_imports(path)
             if target != package and target not in ALLOWED[package]]
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])}: " + "; ".join(wrong)


def test_no_import_by_name():
    """Static imports only: a dependency a reader or a tool cannot see is a hidden cycle."""
    hits = [f"{p.relative_to(ROOT)}" for pkg in ALLOWED for p in (ROOT / pkg).rglob("*.py")
            if "import_module" in p.read_text() or "__import__(" in p.read_text()]
    assert not hits, f"import by name in {hits}"


def test_the_checker_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from bioflexnet.cli import main\n")
    assert project_imports(bad) == {("bioflexnet", 2)}


def test_core_and_the_cli_parser_never_load_torch_or_brian2():
    code = ("import sys, importlib, pkgutil, core\n"
            "for m in pkgutil.iter_modules(core.__path__): importlib.import_module('core.' + m.name)\n"
            "from bioflexnet.cli import build_parser; build_parser()\n"
            "print(sorted(m for m in ('torch', 'brian2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
