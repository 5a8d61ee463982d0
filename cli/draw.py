"""``featureloc draw JOB``: a PNG of a job's query beside its best references, matches drawn.

The matches are recomputed in this process from the map, with the job's own options, so the
figure shows what the worker saw. Reference photos are not kept in the map: ``--images`` points
at the folder the map was built from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import console, database, fail
from core.errors import ImageError, InputError, MapError
from core.mapbuild import IMAGE_SUFFIXES


def find_image(folder: Path, ref_id: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{ref_id}{suffix}", folder / f"{ref_id}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    raise InputError(f"no photo of reference {ref_id!r} in {folder}")


def draw_command(
    job_id: str,
    output: Annotated[Path, typer.Option(help="PNG file to write.")],
    images: Annotated[
        Path, typer.Option(help="Folder of the map's reference photos (file stem = id).")
    ],
    top: Annotated[int, typer.Option(help="How many references (most inliers first).")] = 3,
) -> None:
    """Draw a job's query beside its best references, matches coloured by confidence (jet)."""
    import cv2

    from core.draw import draw_matches, verified_matches
    from core.images import decode_image, read_image
    from core.localiser import LocaliseOptions, Localiser
    from core.mapstore import MapStore
    from core.settings import get_settings
    from db import queries
    from workers.blobstore import BlobNotFound, make_blob_store
    from workers.client import Client
    from workers.maps import image_limits

    if top < 1:
        fail("--top must be at least 1")
    if output.suffix.lower() != ".png":
        fail(f"--output must be a .png file, got {output.name!r}")
    database()
    settings = get_settings()
    client = Client(settings)
    try:
        job = client.result(job_id)
        with client.db.session() as s:
            stored = queries.get_job(s, job_id)
            if stored is None:  # client.result found it: deleted since
                fail(f"unknown job {job_id!r}")
            image_key = stored.image_key
        query = decode_image(make_blob_store(settings).get(image_key), image_limits(settings))
        best = job.candidates[:top]  # most inliers first
        refs = [read_image(find_image(images, c.reference_id)) for c in best]
        localiser = Localiser(
            MapStore(settings.maps_dir).open(job.map_name), settings.resolved_device()
        )
        pairs = verified_matches(
            localiser, query, [c.reference_id for c in best], LocaliseOptions.parse(job.options)
        )
    except BlobNotFound:
        fail(f"the query photo of job {job_id} is no longer in the blob store")
    except (InputError, ImageError, MapError) as exc:
        fail(str(exc))
    captions = [
        f"{p.reference_id} at ({c.position[0]:.1f}, {c.position[1]:.1f}): "
        f"{len(p.confidence)} inliers / {p.tentative} matches"
        for c, p in zip(best, pairs, strict=True)
    ]
    figure = draw_matches(query, refs, pairs, captions or [f"job {job_id}: no candidates"])
    output.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(output), figure):
        fail(f"could not write {output}")
    console.print(
        f"wrote {output} ({figure.shape[1]}x{figure.shape[0]}, {len(pairs)} reference(s))",
        highlight=False,
    )
