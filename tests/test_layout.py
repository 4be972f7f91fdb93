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


# -- the hubimages package: features by folder, no import cycle --------------------------

PROJECT_DIR = REGISTRY_DIR.parent
HUBIMAGES_DIR = PROJECT_DIR / "hubimages"
# What each feature package may import of hubimages (besides itself and `hubimages.models`),
# as its `__init__` docstring and the README's Layout section say.
MAY_IMPORT = {
    "lib": set(),
    "registries": {"lib"},
    "accounts": {"lib", "teams"},
    "sync": {"lib", "registries"},
    "inventory": {"lib", "sync.rollups"},
    "deletion": {"lib", "registries", "inventory", "sync"},
    "retention": {"lib", "registries", "inventory", "sync", "deletion"},
    "storage": {"lib", "registries", "inventory", "sync", "deletion"},
    "trash": {"lib", "registries", "sync"},
    "jobs": {
        "lib",
        "registries",
        "inventory",
        "sync",
        "deletion",
        "retention",
        "storage",
        "trash",
    },
    "teams": {"lib"},
}


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for hubimages and registry (migrations left out)."""
    modules = {}
    for root in (HUBIMAGES_DIR, REGISTRY_DIR):
        for path in root.rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(PROJECT_DIR).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, at module level or inside functions."""
    modules = project_modules()

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        while parts:
            if ".".join(parts) in modules:
                return ".".join(parts)
            parts.pop()
        return None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                submodules = [f"{module}.{alias.name}" for alias in node.names]
                # `from package import module` imports that module (and the package's
                # `__init__`, which holds only a docstring); any other name, the module.
                names_only = [name for name in submodules if name not in modules]
                targets = submodules if not names_only else [module]
            for target in targets:
                found = resolve(target)
                if found and found != name and not name.startswith(found + "."):
                    graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_two_modules_import_each_other_even_through_others_or_inside_functions():
    graph = import_graph()
    assert "hubimages.jobs.runner" in graph and "hubimages.sync.service" in graph
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle_made_through_a_third_module():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_each_feature_imports_only_what_its_folder_says_it_may():
    graph = import_graph()
    for name, targets in graph.items():
        parts = name.split(".")
        if parts[0] != "hubimages" or len(parts) < 3 or parts[1] not in MAY_IMPORT:
            continue
        feature = parts[1]
        for target in targets:
            inside = target.split(".")[1:]
            if not inside or inside[0] in (feature, "models") or target.startswith("registry"):
                continue
            allowed = MAY_IMPORT[feature]
            assert inside[0] in allowed or ".".join(inside[:2]) in allowed, (name, target)


def test_every_folder_of_hubimages_says_what_it_holds_and_what_it_may_import():
    packages = [p.parent for p in HUBIMAGES_DIR.rglob("__init__.py") if "migrations" not in p.parts]
    features = [p for p in packages if p.parent == HUBIMAGES_DIR and p.name != "management"]
    assert {p.name for p in features} >= set(MAY_IMPORT) | {"web", "api"}
    for package in features:
        docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert docstring and "import" in docstring.lower(), package.name


def test_no_database_file_is_tracked_by_git():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=PROJECT_DIR, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked, "not a git checkout"
    assert [name for name in tracked if name.endswith((".sqlite3", ".sqlite", ".db"))] == []


def test_the_wheel_lists_every_package_of_hubimages():
    """setuptools is given the packages by name; one left out would be missing from the
    wheel, and an installed copy would fail only when something imports it."""
    import tomllib

    listed = set(
        tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["tool"]["setuptools"][
            "packages"
        ]
    )
    packages = {
        ".".join(path.parent.relative_to(PROJECT_DIR).parts)
        for root in (HUBIMAGES_DIR, REGISTRY_DIR)
        for path in root.rglob("__init__.py")
    }
    assert packages <= listed


def test_the_pages_and_the_api_never_import_each_other_and_nothing_imports_devtools():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("hubimages.web"):
            assert not any(t.startswith("hubimages.api") for t in targets), name
        if name.startswith("hubimages.api"):
            assert not any(t.startswith("hubimages.web") for t in targets), name
    for path in HUBIMAGES_DIR.rglob("*.py"):
        assert "devtools" not in imported_modules(path), path
