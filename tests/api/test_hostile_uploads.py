"""Hostile uploads get a clear 4xx problem document and create no job."""

from __future__ import annotations

import json
import struct
import zlib

import httpx
import pytest

from tests.api.conftest import MAP, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS

pytestmark = pytest.mark.integration


def png_bomb(width: int, height: int) -> bytes:
    """A valid greyscale PNG of width x height zero pixels: tiny on disk, huge decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    raw = (b"\x00" + bytes(width)) * height  # filter byte + one row
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _refused(api_stack, status: int, detail: str, **request) -> None:
    """The upload is answered with ``status`` and a problem naming ``detail``; no job is made."""
    before = api_stack.job_count()
    with api_stack.client() as http:
        answer = http.request(request.pop("method", "POST"), request.pop("path"), **request)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert detail in answer.json()["detail"], answer.json()
    assert api_stack.job_count() == before, "a refused upload created a job"


def _upload_path(map_name: str = MAP) -> str:
    return f"/v1/maps/{map_name}/jobs"


def test_an_empty_photo(api_stack):
    _refused(api_stack, 400, "empty image", path=_upload_path(), files={"photo": ("a.jpg", b"")})


def test_a_text_file(api_stack):
    text = b"#!/bin/sh\nrm -rf /\n" * 20
    _refused(api_stack, 400, "not an image", path=_upload_path(), files={"photo": ("a.jpg", text)})


def test_a_truncated_photo(api_stack):
    data = api_stack.query_photos()[0].read_bytes()
    files = {"photo": ("a.jpg", data[: len(data) // 2])}
    _refused(api_stack, 400, "truncated JPEG", path=_upload_path(), files=files)


def test_a_decompression_bomb(api_stack):
    bomb = png_bomb(8000, 8000)  # 64 MP in about 60 kB
    assert len(bomb) < MAX_IMAGE_BYTES and MAX_IMAGE_PIXELS < 8000 * 8000
    files = {"photo": ("bomb.png", bomb, "image/png")}
    _refused(api_stack, 400, "too many pixels", path=_upload_path(), files=files)


def test_a_body_over_the_size_limit_declared_or_streamed(api_stack):
    big = b"\xff\xd8\xff" + bytes(3 * MAX_IMAGE_BYTES)
    # Declared: Content-Length says it all, the body is refused before it is read.
    files = {"photo": ("big.jpg", big)}
    _refused(api_stack, 413, "larger than the limit", path=_upload_path(), files=files)
    # Streamed (chunked, no Content-Length): refused as it passes the limit.
    boundary = "featureloc-test"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def body():
        yield head
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    _refused(
        api_stack,
        413,
        "larger than the limit",
        path=_upload_path(),
        content=body(),
        headers=headers,
    )


def test_a_photo_just_over_the_photo_limit(api_stack):
    # Inside the body limit (photo limit + room for the form), over the photo limit.
    files = {"photo": ("big.jpg", b"\xff\xd8\xff" + bytes(MAX_IMAGE_BYTES))}
    _refused(api_stack, 413, f"limit of {MAX_IMAGE_BYTES} bytes", path=_upload_path(), files=files)


@pytest.mark.parametrize(
    "map_name",
    ["..", "..%2F..%2Fetc", ".hidden", "a%5Cb", "%2E%2E", "x" * 65, "-dash", "a%00b"],
)
def test_a_path_like_map_name(api_stack, map_name):
    files = {"photo": ("a.jpg", api_stack.query_photos()[0].read_bytes())}
    before = api_stack.job_count()
    with api_stack.client() as http:
        answer = http.post(f"{api_stack.url}/v1/maps/{map_name}/jobs", files=files)
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert api_stack.job_count() == before


def test_an_unknown_map(api_stack):
    files = {"photo": ("a.jpg", api_stack.query_photos()[0].read_bytes())}
    _refused(api_stack, 404, "unknown map", path=_upload_path("no-such-map"), files=files)


@pytest.mark.parametrize(
    ("options", "detail"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"no_such_option": 1}), "bad options"),
        (json.dumps({"top_k": -3}), "bad options"),
    ],
)
def test_bad_options(api_stack, options, detail):
    files = {"photo": ("a.jpg", api_stack.query_photos()[0].read_bytes())}
    _refused(api_stack, 400, detail, path=_upload_path(), files=files, data={"options": options})


@pytest.mark.parametrize("matcher", ["superglue", "lighterglue", "lightglue"])
def test_a_matcher_the_map_cannot_use(api_stack, matcher):
    """The map is SIFT: a learned matcher of other features is refused at submission with the
    worker's own rule, before the photo is stored (core.localiser.require_compatible)."""
    from tests.support.faults import variants
    from workers.blobstore import blob_key, make_blob_store

    photo = variants(api_stack.query_photos()[0].read_bytes(), 1)[0]  # sent nowhere else
    files = {"photo": ("a.jpg", photo)}
    data = {"options": json.dumps({"matcher": matcher})}
    _refused(
        api_stack, 400, "cannot match 'sift' features", path=_upload_path(), files=files, data=data
    )
    assert not make_blob_store(api_stack.stack.settings).exists(blob_key(photo))


def test_not_multipart_or_without_a_photo(api_stack):
    photo = api_stack.query_photos()[0].read_bytes()
    _refused(api_stack, 415, "multipart/form-data", path=_upload_path(), content=photo)
    _refused(
        api_stack,
        400,
        "'photo'",
        path=_upload_path(),
        files={"picture": ("a.jpg", photo)},
    )
    # Up to 8 photo parts are a photo set (tests/api/test_photo_sets_http.py); 9 are refused.
    nine = [("photo", (f"{n}.jpg", photo)) for n in range(9)]
    _refused(api_stack, 400, "files", path=_upload_path(), files=nine)


def test_refused_uploads_leave_the_server_serving(api_stack):
    with api_stack.client() as http:
        assert http.get("/healthz").status_code == 200
        with pytest.raises(httpx.HTTPStatusError):
            http.get("/v1/jobs/does-not-exist").raise_for_status()
