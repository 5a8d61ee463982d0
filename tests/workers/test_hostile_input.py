"""Hostile input through the real service and the real CLI: every bad photo fails its own job
with a clear reason, the worker serves on, and a bad positions CSV leaves no map behind."""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.errors import MapError
from tests.support.faults import JOB_OPTIONS, PrivateRedis, make_tiny_scene, query_images, stack
from tests.support.paths import REPO

pytestmark = pytest.mark.integration


def _png_bomb(side: int = 20_000) -> bytes:
    """A real, valid 1-bit PNG of side x side pixels: ~50 KB that would decode to 1.2 GB BGR."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    row = b"\x00" * (1 + side // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # 1 bit, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _jpeg_bomb(side: int = 20_000) -> bytes:
    """A small JPEG whose frame header claims side x side pixels."""
    ok, data = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
    data = bytearray(data.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = side.to_bytes(2, "big") * 2
    return bytes(data)


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    scene = make_tiny_scene(tmp / "scene")
    redis = PrivateRedis(tmp / "redis").start()
    try:
        with stack(tmp / "svc", scene, broker_url=redis.url, max_image_bytes="3000000") as st:
            worker = st.worker().start()
            try:
                yield st, worker
            finally:
                worker.stop()
    finally:
        redis.stop()


def test_bad_photos_fail_their_jobs_and_the_worker_serves_on(service):
    st, worker = service
    client = st.client()
    good = query_images(st.scene)[0].read_bytes()
    good_png = _png(cv2.imread(str(query_images(st.scene)[0])))
    cases = {
        "truncated JPEG": (good[: len(good) // 2], "tiny", "truncated JPEG"),
        "truncated PNG": (good_png[: len(good_png) // 2], "tiny", "truncated PNG"),
        "zero bytes": (b"", "tiny", "empty image: 0 bytes"),
        "1x1 image": (_png(np.zeros((1, 1, 3), np.uint8)), "tiny", "image too small: 1x1"),
        "PNG bomb 20000x20000": (_png_bomb(), "tiny", "too many pixels: 20000x20000"),
        "JPEG bomb 20000x20000": (_jpeg_bomb(), "tiny", "too many pixels: 20000x20000"),
        "non-image": (b"#!/bin/sh\nrm -rf /\n" * 20, "tiny", "not an image"),
        "PNG magic, garbage body": (good_png[:8] + bytes(4000), "tiny", "corrupt or truncated PNG"),
        "over the byte limit": (b"\xff\xd8\xff" + b"\0" * 3_000_001, "tiny", "image too large"),
        "unknown map": (good, "no-such-map", "unknown map 'no-such-map'"),
    }
    ids = {name: client.submit(data, m, JOB_OPTIONS) for name, (data, m, _) in cases.items()}
    for name, (_, _, reason) in cases.items():
        res = client.wait(ids[name], timeout=60)
        assert res.status == "failed", name
        assert reason in res.error, (name, res.error)
        assert "internal error" not in res.error, (name, res.error)
        assert not res.candidates

    with pytest.raises(MapError, match="invalid map name"):
        client.submit(good, "../../etc", JOB_OPTIONS)  # refused before anything is stored

    served = client.wait(client.submit(good, "tiny", JOB_OPTIONS), timeout=60)
    assert served.status == "done" and served.candidates
    decoded = [client.result(ids[n]).worker for n in cases if n != "over the byte limit"]
    assert set(decoded) == {served.worker}, "one pool process took every hostile photo"
    assert worker.proc.poll() is None
    assert "Traceback" not in worker.log(), "bad input is an expected failure, not a crash"


def _build(st, name: str, images: Path, positions: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "map", "build", name]
        + ["--images", str(images), "--positions", str(positions), "--extractor", "sift"]
        + ["--retriever", "exhaustive"],
        env=st.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _map_names(st) -> set[str]:
    from db import queries

    with st.db().session() as s:
        return {m.name for m in queries.list_maps(s)}


def test_bad_positions_csv_leaves_no_map(service, tmp_path):
    st, _ = service
    images = st.scene / "images"
    ids = sorted(p.stem for p in images.glob("ref_*.jpg"))
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "id,x,y\n"
        f"{ids[0]},1.0,2.0\n"
        f"{ids[1]},nan,2.0\n"  # NaN coordinate
        f"{ids[2]},,2.0\n"  # missing coordinate
        f"{ids[3]},inf,0\n"  # infinite
        f"{ids[0]},5.0,6.0\n"  # duplicate id
        "ghost_photo,1.0,1.0\n"  # listed image that does not exist
    )
    no_y = tmp_path / "no_y.csv"
    no_y.write_text(f"id,x\n{ids[0]},1.0\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("id,x,y\n")

    for name, csv_path, reasons in [
        (
            "bad-rows",
            bad,
            [
                "5 bad row(s)",
                f"id {ids[1]!r} has a non-finite coordinate",
                f"id {ids[2]!r} has a missing or non-numeric coordinate",
                f"id {ids[3]!r} has a non-finite coordinate",
                f"duplicate id {ids[0]!r}",
                "no image for id 'ghost_photo'",
            ],
        ),
        ("no-y", no_y, ["missing column(s) y"]),
        ("no-rows", empty, ["no rows"]),
    ]:
        out = _build(st, name, images, csv_path)
        said = " ".join((out.stdout + out.stderr).split())  # rich wraps long lines
        assert out.returncode == 1, said
        for reason in reasons:
            assert reason in said, (name, reason, said)
        assert not (st.settings.maps_dir / name).exists(), f"{name}: a map folder was left"
        assert name not in _map_names(st)
    assert (st.settings.maps_dir).is_dir() and sorted(
        p.name for p in st.settings.maps_dir.iterdir()
    ) == ["tiny"], "no temporary files or parts were left beside the maps"


def test_unreadable_reference_is_reported_and_skipped(service, tmp_path):
    """A truncated reference photo fails its own row; the map is built from the others."""
    st, _ = service
    images = tmp_path / "images"
    images.mkdir()
    refs = sorted((st.scene / "images").glob("ref_*.jpg"))[:4]
    for p in refs:
        (images / p.name).write_bytes(p.read_bytes())
    broken = images / refs[1].name
    broken.write_bytes(broken.read_bytes()[:500])
    positions = tmp_path / "positions.csv"
    positions.write_text("id,x,y\n" + "".join(f"{p.stem},{i},0\n" for i, p in enumerate(refs)))

    out = _build(st, "partial", images, positions)
    said = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 0, said
    assert "3 added" in said and "1 failed" in said and refs[1].stem in said, said
    from db import queries

    with st.db().session() as s:
        assert queries.get_map(s, "partial").num_references == 3
    parts = sorted(p.name for p in (st.settings.maps_dir / "partial" / "parts").iterdir())
    assert parts and all(n.startswith("part-") and n.endswith(".feat") for n in parts), parts
