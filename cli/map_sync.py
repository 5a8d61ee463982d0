"""Maps in the map store that the database does not know are recorded without a rebuild.

A map is its folder under ``FEATURELOC_MAPS_DIR`` (core/mapstore.py); the database only lists it
(workers/maps.py ``record_map``). A new database, or a map built elsewhere and copied in, would
otherwise stay invisible to ``map list``, ``apikey create --map`` and the HTTP API until
``map build`` ran again: ``map list``, ``apikey create``, ``worker`` and ``serve`` record them
first.
"""

from __future__ import annotations

from cli.common import err_console


def register_found_maps() -> list[str]:
    """Record every map of the map store that the database lacks; returns their names."""
    from core.errors import MapError
    from core.mapstore import MapStore
    from db import queries
    from db.session import Database
    from workers.maps import record_map
    from workers.settings import get_settings

    settings = get_settings()
    with Database(settings.database_url.get_secret_value()).session() as s:
        known = {m.name for m in queries.list_maps(s)}
    found = []
    for name in MapStore(settings.maps_dir).names():
        if name in known:
            continue
        try:
            count = record_map(settings, name)
        except MapError as exc:  # a map that cannot be read is reported, the others recorded
            err_console.print(f"map {name!r} in the map store not recorded: {exc}", markup=False)
            continue
        err_console.print(
            f"map {name!r} found in {settings.maps_dir}: recorded ({count} references)",
            markup=False,
            highlight=False,
        )
        found.append(name)
    return found
