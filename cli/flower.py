"""``featureloc flower``: Flower (Celery's web monitor) on the featureloc app, basic auth on.

Workers send task events (``--task-events``, ``worker_send_task_events``), so Flower shows every
task live. Its Prometheus endpoint is ``/metrics``; Flower serves it *without* authentication
(so Prometheus can scrape it), so it listens on 127.0.0.1 unless ``--address`` says otherwise
(as ``featureloc serve`` does): open it to an internal network only, or put a proxy in front.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Annotated

import typer

from cli.common import fail

_AUTH_RE = re.compile(r"^[^:,\s]+:[^,\s]+$")


def flower_argv(port: int, address: str) -> list[str]:
    """The command that runs Flower on the app (the Celery app reads the same settings)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "flower",
        f"--port={port}",
        f"--address={address}",
    ]


def flower_command(
    port: Annotated[int, typer.Option(help="HTTP port.")] = 5555,
    address: Annotated[
        str, typer.Option(help="Address to listen on (/metrics needs no login: keep it private).")
    ] = "127.0.0.1",
    basic_auth: Annotated[
        str | None,
        typer.Option(help="user:password (or set FLOWER_BASIC_AUTH; comma-separate several)."),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Run without authentication (local use only).")
    ] = False,
) -> None:
    """Run Flower on the featureloc Celery app; refuses to start without basic auth."""
    auth = basic_auth or os.environ.get("FLOWER_BASIC_AUTH")
    env = os.environ.copy()
    if auth:
        if not all(_AUTH_RE.match(a) for a in auth.split(",")):
            fail("basic auth must be user:password (several separated by commas)")
        # Through the environment, not argv: the password stays out of the process list.
        env["FLOWER_BASIC_AUTH"] = auth
    elif not no_auth:
        fail(
            "Flower shows every task and can control workers: give --basic-auth user:password or "
            "set FLOWER_BASIC_AUTH (or pass --no-auth explicitly for local use)"
        )
    argv = flower_argv(port, address)
    os.execve(argv[0], argv, env)
