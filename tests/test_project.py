"""The project's promises to a new user (the README's commands are the ones CI runs) and to whoever carries
the code on (no function grows long without a reason written beside it)."""

import ast
import re
from pathlib import Path

from typer.testing import CliRunner

from geoloc import __version__
from geoloc.cli import app

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_quick_start_has_two_commands_and_ci_runs_the_test_one():
    commands = quick_start_commands()
    assert len(commands) == 2
    setup_and_run, setup_and_test = commands
    assert setup_and_run.startswith("bash scripts/setup.sh && ")
    assert "pytest" in setup_and_test
    assert setup_and_test.endswith("pytest -m ray"), "the tests marked ray (skipped by default) must run once"
    ci_script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup_and_test in ci_script


def test_quick_start_files_exist():
    setup_and_run = quick_start_commands()[0]
    for word in setup_and_run.split():
        if word.startswith(("examples/", "scripts/")):
            assert (ROOT / word).is_file(), word


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.stdout


def command_paths(group=None, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf command of the CLI as its words, e.g. ('cells', 'build')."""
    import typer.main

    group = group or typer.main.get_command(app)
    paths = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def test_readme_stays_short_and_its_links_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 15 * 1024
    targets = re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", readme)
    assert targets, "the README links to its docs pages"
    for target in targets:
        assert (ROOT / target).is_file(), target


def test_every_command_has_a_readme_row_and_a_docs_page_that_describes_it():
    readme = (ROOT / "README.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in readme.splitlines() if line.startswith("| `geoloc ")}
    for words in command_paths():
        group = f"`geoloc {' '.join(words[:-1])}" if len(words) > 1 else f"`geoloc {words[0]}`"
        row = next((line for first, line in rows.items() if first.startswith(group) and words[-1] in first), None)
        assert row is not None, f"geoloc {' '.join(words)} has no row in the README's command table"
        page = re.search(r"\]\((docs/[^)#]+\.md)", row).group(1)
        text = (ROOT / page).read_text()
        assert f"geoloc {' '.join(words)}" in text, f"{page} does not describe geoloc {' '.join(words)}"


def help_of(*words: str) -> str:
    result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_top_level_help_lists_the_commands_in_pipeline_order():
    output = help_of()
    positions = [re.search(rf"│ {name} ", output).start() for name in
                 ("catalog", "landmarks", "cells", "embed", "index", "retrieve", "classifier", "geoclip", "candidates",
                  "ranker", "evaluate", "predict", "serve")]
    assert positions == sorted(positions)
    assert output.index("1. Data") < output.index("2. Gallery") < output.index("5. Results")


def test_help_shows_plain_metavars_and_brackets_as_written():
    for words in command_paths():
        output = help_of(*words)
        assert not re.search(r"<(bool|str|path|int|float|list\[)", output), (words, output)
    assert "pip install 'geoloc[ray]'" in help_of("catalog", "build")
    assert "pip install 'geoloc[ray]'" in help_of("embed")
    assert "[great-circle|geodesic]" in help_of("evaluate")


def test_ranker_score_marks_which_flags_belong_to_which_ranker():
    output = help_of("ranker", "score")
    georanker, light = output.index("GeoRanker (--adapter"), output.index("Light ranker (--adapter")
    panels = output.split("Usage:", 1)[1].split("╭─ ")
    flags = {panel.split(" ─", 1)[0]: panel for panel in panels}
    assert georanker < light
    assert "--images " in flags["GeoRanker (--adapter is a LoRA adapter folder)"]
    assert "--plain " in flags["GeoRanker (--adapter is a LoRA adapter folder)"]
    assert "--query-embeddings " in flags["Light ranker (--adapter holds light_ranker.json)"]


LONGEST_FUNCTION = 80
LONG_BECAUSE = "# long because"
NEWLINE = "\n"


def long_functions(source: str, name: str) -> list[str]:
    """Functions (and methods) of more than LONGEST_FUNCTION lines, signature included, with no
    `# long because ...` comment inside them saying why."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > LONGEST_FUNCTION and not any(LONG_BECAUSE in line for line in
                                                     lines[node.lineno - 1:node.end_lineno]):
                found.append(f"{name}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_long_without_a_reason_beside_it():
    found = [entry for path in sorted((ROOT / "src").rglob("*.py"))
             for entry in long_functions(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []


def test_the_length_check_flags_a_long_function_and_accepts_a_reason():
    body = "".join(f"    x{i} = {i}\n" for i in range(LONGEST_FUNCTION))
    assert long_functions(f"def short():\n{body.partition(NEWLINE)[2]}", "a.py") == []
    assert long_functions(f"def long():\n{body}", "a.py") == [f"a.py:1 long ({LONGEST_FUNCTION + 1} lines)"]
    assert long_functions(f"def long():\n    {LONG_BECAUSE} one table of cases\n{body}", "a.py") == []


CORE_COUNTING = re.compile(r"os\.cpu_count\(|sched_getaffinity|workers=-1|n_jobs=-1")
"""Ways of sizing a pool that see the machine's cores, not the cores this process may use."""


def test_every_pool_is_sized_by_what_the_process_may_use():
    """geoloc.machine alone counts cores (affinity and cgroup quota included); a pool sized any other way
    oversubscribes a container."""
    found = [f"{path.relative_to(ROOT)}:{number}" for path in sorted((ROOT / "src").rglob("*.py"))
             if path.name != "machine.py"
             for number, line in enumerate(path.read_text().splitlines(), 1) if CORE_COUNTING.search(line)]
    assert found == []
