"""The package boundaries the README's Layout section promises."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import registry

REGISTRY_DIR = Path(registry.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_of_the_registry_library_imports_django_hubimages_or_devtools():
    modules = sorted(REGISTRY_DIR.glob("*.py"))
    assert len(modules) >= 5
    for path in modules:
        assert not imported_modules(path) & {"django", "hubimages", "devtools"}, path.name


def test_the_registry_library_imports_with_django_absent():
    """A subprocess with a minimal environment whose import system has no Django (nor
    hubimages) at all: `-I` drops PYTHONPATH and user site-packages, and a finder refuses
    the rest of what the virtualenv holds."""
    script = f"""
import importlib, importlib.abc, pkgutil, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("django", "hubimages", "devtools"):
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Absent())
sys.path.insert(0, {str(REGISTRY_DIR.parent)!r})
import registry
for module in pkgutil.iter_modules(registry.__path__):
    importlib.import_module(f"registry.{{module.name}}")
print(sorted(name for name in sys.modules if name.startswith("registry")))
"""
    result = subprocess.run(
        [sys.executable, "-I", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "")},
        cwd="/",
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "'registry.client'" in result.stdout and "'registry.crawl'" in result.stdout
