"""Helpers shared by the CLI commands."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def parse_options(option: list[str] | None, options_json: str | None) -> dict[str, Any]:
    """Job options from ``--option key=value`` (values parsed as JSON) and ``--options``."""
    opts: dict[str, Any] = {}
    if options_json:
        try:
            loaded = json.loads(options_json)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"--options is not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise typer.BadParameter("--options must be a JSON object")
        opts.update(loaded)
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--option takes key=value, got {item!r}")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    return opts


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
