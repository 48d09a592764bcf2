"""The architecture's import rule: a stage imports only earlier stages and shared modules, never in a cycle."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "geoloc"
FRONT_ENDS = {"cli", "serve"}


def part_of(module: str) -> str | None:
    """The geoloc package or top-level module that `module` (dotted) belongs to."""
    words = module.split(".")
    return words[1] if words[0] == "geoloc" and len(words) > 1 else None


def import_graph() -> dict[str, set[str]]:
    """Which parts of geoloc each part imports, counting imports inside functions too."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        source = part_of(".".join(relative.parts))
        if source is None or source == "__init__":
            continue
        targets = graph.setdefault(source, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                target = part_of(name)
                if target and target != source and ((PACKAGE / target).exists() or (PACKAGE / f"{target}.py").exists()):
                    targets.add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as the parts along it, or None."""
    state: dict[str, str] = {}

    def visit(part: str, path: list[str]) -> list[str] | None:
        state[part] = "open"
        for target in sorted(graph.get(part, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target] if target in path else [part, target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[part] = "done"
        return None

    for part in sorted(graph):
        if part not in state and (cycle := visit(part, [part])):
            return cycle
    return None


def test_no_import_cycle_between_geoloc_packages():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_stages_never_import_the_front_ends():
    for part, targets in import_graph().items():
        if part not in FRONT_ENDS:
            assert not targets & FRONT_ENDS, f"geoloc.{part} imports {sorted(targets & FRONT_ENDS)}"


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"index": {"places"}, "places": {"geo"}, "geo": set()}) is None
    planted = {"index": {"candidates"}, "candidates": {"index", "geo"}}
    assert find_cycle(planted) == ["candidates", "index", "candidates"]


@pytest.mark.parametrize("stage", ["index", "candidates", "catalog", "images", "places"])
def test_each_stage_package_is_in_the_graph(stage):
    assert stage in import_graph()
