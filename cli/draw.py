"""``featureloc draw JOB``: a PNG of a job's query beside the references it counted, inliers drawn.

The figure comes from ``workers/figures.py``, as the HTTP API's does: drawn from the inliers the
job kept, with no model or map loaded. Reference photos are not kept in the map: ``--images``
points at the folder the map was built from, by default the folder the map records
(``featureloc map images``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import console, database, fail
from core.errors import ImageError, InputError, MapError


def draw_command(
    job_id: str,
    output: Annotated[Path, typer.Option(help="PNG file to write.")],
    images: Annotated[
        Path | None,
        typer.Option(
            help="Folder of the map's reference photos (file stem = id); default: the map's."
        ),
    ] = None,
    top: Annotated[
        int, typer.Option(help="How many references (those that decided the answer first).")
    ] = 3,
    photo: Annotated[
        int, typer.Option(help="Which photo of a photo set, from 1 (a single photo job: 1).")
    ] = 1,
) -> None:
    """Draw a job's query beside the references it counted, their verified inliers drawn."""
    import cv2

    from core.mapstore import MapStore
    from workers.blobstore import BlobNotFound
    from workers.client import Client
    from workers.figures import FIGURE_REFERENCES, job_figure
    from workers.settings import get_settings

    if not 1 <= top <= FIGURE_REFERENCES:
        fail(f"--top must be from 1 to {FIGURE_REFERENCES}")
    if output.suffix.lower() != ".png":
        fail(f"--output must be a .png file, got {output.name!r}")
    database()
    client = Client(get_settings())
    try:
        map_name = client.result(job_id).map_name
        folder = images or MapStore(client.settings.maps_dir).images_dir(map_name)
        figure = job_figure(client, job_id, folder, top, photo - 1)
    except BlobNotFound:
        fail(f"the query photo of job {job_id} is no longer in the blob store")
    except (InputError, ImageError, MapError) as exc:
        fail(str(exc))
    if figure.note:
        console.print(figure.note, highlight=False)
    if figure.missing:
        console.print(f"no photo in {folder} of: {', '.join(figure.missing)}", highlight=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(output), figure.image):
        fail(f"could not write {output}")
    console.print(
        f"wrote {output} ({figure.image.shape[1]}x{figure.image.shape[0]}, "
        f"{len(figure.drawn)} reference(s))",
        highlight=False,
    )
