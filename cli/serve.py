"""``featureloc serve``: the HTTP API (``api/``) under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer


def serve_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes.")] = 1,
    proxy_headers: Annotated[
        bool,
        typer.Option(help="Trust X-Forwarded-* from --forwarded-allow-ips (behind TLS proxy)."),
    ] = False,
    forwarded_allow_ips: Annotated[
        str, typer.Option(help="Proxies trusted for X-Forwarded-*.")
    ] = "127.0.0.1",
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the HTTP API: submit photos, read jobs and maps, the job page, /docs."""
    import uvicorn

    from cli.common import database
    from cli.map_sync import register_found_maps

    database()  # migrate once here, not in every server process
    register_found_maps()
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
        log_level=log_level,
        server_header=False,
    )
