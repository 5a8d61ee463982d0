"""``featureloc map upgrade`` and ``featureloc map publish``: a map's storage format and its
versions in object storage (``core/mapstore.py``, ``workers/mapversions.py``)."""

from __future__ import annotations

from cli.common import console, database, fail, get_settings
from core.errors import MapError


def map_upgrade(name: str) -> None:
    """Convert a format 1 map (HDF5 parts) to format 2 (memory-mapped flat parts), then describe
    its references again for retrieval, keeping the codebook; a format 2 map is left as is."""
    from core.mapstore import MapStore
    from workers.maps import register_map

    settings = get_settings()
    database()
    try:
        converted = MapStore(settings.maps_dir).upgrade(name)
        if converted:
            # Descriptors and index over the converted parts; publishes with map_backend=s3.
            register_map(settings, name)
    except MapError as exc:
        fail(str(exc))
    if converted:
        console.print(f"map {name!r}: {converted} part(s) converted to format 2")
    else:
        console.print(f"map {name!r} is already in format 2: nothing to do")


def map_publish(name: str) -> None:
    """Publish the map as a new immutable version in the S3 bucket (s3_bucket, s3_map_prefix)
    and point its LATEST at it; workers with map_backend=s3 switch to it between jobs."""
    from botocore.exceptions import BotoCoreError, ClientError

    from core.mapstore import MapStore
    from workers.mapversions import make_map_versions

    settings = get_settings()
    if not settings.s3_bucket:
        fail("publishing needs a bucket: set FEATURELOC_S3_BUCKET (and the s3_* settings)")
    store = MapStore(settings.maps_dir)
    try:
        store.open(name)  # a map that loads: known, and in the current format
        version = make_map_versions(settings).publish(store.path(name), name)
    except MapError as exc:
        fail(str(exc))
    except (BotoCoreError, ClientError) as exc:
        fail(f"could not publish map {name!r} to bucket {settings.s3_bucket!r}: {exc}")
    console.print(f"map {name!r} published as version {version}")
