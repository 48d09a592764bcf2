"""The project's promises to a new user: the README's commands are the ones CI runs."""

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
