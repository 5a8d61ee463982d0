"""cli/common.py and how the commands hang together (no processes, no services)."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta

import pytest
import typer

from cli.common import parse_since
from cli.main import COMMANDS
from tests.support.paths import REPO


def test_since_takes_an_age_or_an_iso_time():
    assert parse_since(None) is None and parse_since("") is None
    age = datetime.now(UTC) - parse_since("90m")
    assert timedelta(minutes=89) < age < timedelta(minutes=91)
    assert parse_since("2024-05-01T12:00:00") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_since("2024-05-01T12:00:00+02:00").utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("bad", ["yesterday", "5w", "m", "2024-13-01"])
def test_a_bad_since_names_the_option(bad):
    with pytest.raises(typer.BadParameter, match="--since"):
        parse_since(bad)


def test_every_command_is_registered_once_from_the_table():
    names = [(id(group), name) for group, name, _ in COMMANDS]
    assert len(names) == len(set(names))
    for group, name, command in COMMANDS:
        registered = [c for c in group.registered_commands if c.name == name]
        assert [c.callback for c in registered] == [command]


def test_no_command_module_imports_cli_main():
    # cli.main imports the command modules; they share helpers through cli.common, not back.
    for path in (REPO / "cli").glob("*.py"):
        if path.name == "main.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "cli.main", f"{path.name} imports cli.main"
