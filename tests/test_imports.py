"""The architecture's import rules, module by module, imports inside functions included.

A module imports only modules of earlier layers (shared modules at the bottom, then the
stages in pipeline order, the front ends last), never a private name of another module,
and no chain of imports leads back to where it started.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
ARCHITECTURE_PAGE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

LAYERS = (
    ("errors", "machine"),
    ("geo", "tables", "progress", "user_cache", "hub", "cluster", "fitting", "bundled", "network"),
    ("resumable", "images", "places"),
    ("embeddings", "catalog"),
    ("cells", "encode", "index", "evaluate", "geoclip", "plonk"),
    ("candidates",),
    ("classifier", "rank", "predict"),
    ("recipe",),
    ("maps", "serve"),
    ("cli",),
)
"""geoloc's packages and top-level modules, lowest first; a module imports only earlier layers
(and other modules of its own package). The first three layers are the shared modules."""


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(name: str, root: Path) -> str | None:
    """The module a dotted name refers to: the longest prefix that is a file or package under `root`."""
    words = name.split(".")
    for end in range(len(words), 0, -1):
        base = root.joinpath(*words[:end])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return ".".join(words[:end])
    return None


def imports_of(path: Path, root: Path, package: str) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every import in the file, at any depth."""
    here = module_name(path, root)
    is_package = path.name == "__init__.py"
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = resolve(f"{base}.{alias.name}", root)
                found.append((submodule, None) if submodule == f"{base}.{alias.name}" else (base, alias.name))
    return [(target, name) for target, name in found if target.split(".")[0] == package]


def import_graph(root: Path = SOURCE, package: str = "geoloc") -> dict[str, dict[str, set[str | None]]]:
    """module -> {module it imports -> names taken from it (None: the module itself)}."""
    graph: dict[str, dict[str, set[str | None]]] = {}
    for path in sorted((root / package).rglob("*.py")):
        targets = graph.setdefault(module_name(path, root), {})
        for target, name in imports_of(path, root, package):
            module = resolve(target, root)
            if module is not None and module != module_name(path, root):
                targets.setdefault(module, set()).add(name)
    return graph


def find_cycle(graph: dict[str, set[str]] | dict[str, dict]) -> list[str] | None:
    """One import cycle as the modules along it, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def layer_of(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    for depth, layer in enumerate(LAYERS):
        if part in layer:
            return depth
    raise AssertionError(f"{module} is in no layer: add geoloc.{part} to LAYERS (and to docs/architecture.md)")


def backward_imports(graph: dict[str, dict]) -> list[str]:
    """Imports of a later layer, or of another package of the same layer."""
    wrong = []
    for module, targets in graph.items():
        for target in targets:
            same_package = module.split(".")[:2] == target.split(".")[:2]
            if module.count(".") and target.count(".") and not same_package and layer_of(target) >= layer_of(module):
                wrong.append(f"{module} imports {target}")
    return sorted(wrong)


def private_imports(graph: dict[str, dict]) -> list[str]:
    """Names with a leading underscore taken from another module."""
    return sorted(f"{module} takes {target}.{name}" for module, targets in graph.items()
                  for target, names in targets.items() for name in names
                  if name and name.startswith("_") and not name.endswith("__"))


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_every_module_imports_only_earlier_layers():
    assert backward_imports(import_graph()) == []


def test_no_module_takes_a_private_name_of_another():
    assert private_imports(import_graph()) == []


def test_every_package_has_a_layer_and_every_layer_a_package():
    parts = {module.split(".")[1] for module in import_graph() if "." in module}
    assert parts == {part for layer in LAYERS for part in layer}


def test_the_architecture_page_quotes_the_layers_as_written_here():
    source = Path(__file__).read_text()
    written = re.search(r"^LAYERS = \(\n.*?^\)\n", source, re.DOTALL | re.MULTILINE).group(0)
    assert written in ARCHITECTURE_PAGE.read_text()


def plant(root: Path, files: dict[str, str]) -> Path:
    """A package `geoloc` under `root` with the given modules (path -> source)."""
    for name, text in {"geoloc/__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checker_finds_a_circle_hidden_in_a_function(tmp_path):
    root = plant(tmp_path, {
        "geoloc/encode/__init__.py": "",
        "geoloc/encode/backbone.py": "def load():\n    from geoloc.encode.g3 import load_g3\n",
        "geoloc/encode/g3.py": "from .backbone import Backbone\n",
    })
    assert find_cycle(import_graph(root)) == ["geoloc.encode.backbone", "geoloc.encode.g3", "geoloc.encode.backbone"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_checker_finds_a_backward_import(tmp_path):
    root = plant(tmp_path, {
        "geoloc/geo/__init__.py": "import math\n",
        "geoloc/catalog/__init__.py": "from geoloc import geo\n",
        "geoloc/cells/__init__.py": "def plot():\n    import geoloc.predict\n",
        "geoloc/predict.py": "from geoloc.catalog import build\n",
        "geoloc/catalog/build.py": "",
    })
    assert backward_imports(import_graph(root)) == ["geoloc.cells imports geoloc.predict"]


def test_the_checker_finds_a_private_name_taken_across_modules(tmp_path):
    root = plant(tmp_path, {
        "geoloc/encode/__init__.py": "",
        "geoloc/encode/backbone.py": "def _unavailable():\n    pass\n",
        "geoloc/encode/g3.py": "from geoloc.encode.backbone import Backbone, _unavailable\n",
    })
    assert private_imports(import_graph(root)) == ["geoloc.encode.g3 takes geoloc.encode.backbone._unavailable"]


@pytest.mark.parametrize("module", ["geoloc.encode.g3", "geoloc.resumable", "geoloc.images.jpeg", "geoloc.cli.predict"])
def test_modules_are_in_the_graph(module):
    assert module in import_graph()
