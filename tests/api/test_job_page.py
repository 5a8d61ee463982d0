"""The job page in a real headless Chromium: sign in with a key, the page shows the job's numbers,
its two images (matches and map plot) render, the figure unscaled (readable captions) and of one
capped size whatever the upload's, the candidates table says what it leaves out, an unfinished
job's page refreshes itself, and an unknown job gets a page, not JSON. The figure shows exactly
the references and inliers the job recorded."""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from api.auth import COOKIE
from api.pages import CANDIDATE_ROWS, FIGURE_TOP
from core.angles import heading_text
from core.draw import FONT, FONT_SCALE, figure_size, unpack_inliers
from db import queries
from db.models import Job
from tests.api.conftest import MAP, MAX_IMAGE_PIXELS
from workers.figures import FIGURE_REFERENCES, NOT_KEPT, job_figure

pytestmark = pytest.mark.integration


def _done_job(api_stack, photo: bytes | None = None) -> dict:
    photo = photo or api_stack.query_photos()[1].read_bytes()
    with api_stack.client() as http:
        job = http.post(f"/v1/maps/{MAP}/jobs", files={"photo": ("q.jpg", photo)})
        assert job.status_code == 202, job.text
        done = http.get(f"/v1/jobs/{job.json()['id']}", params={"wait": 60}).json()
    assert done["status"] == "done" and done["localised"], done
    return done


def _kept(api_stack, job_id: str) -> int:
    """How many references the job kept inliers of."""
    with api_stack.stack.db().session() as s:
        data = queries.get_job(s, job_id).figure_inliers
    return len(unpack_inliers(data)[0].inliers)


def _png(api_stack, job_id: str, top: int = FIGURE_TOP, photo: int = 0) -> np.ndarray:
    with api_stack.client() as http:
        answer = http.get(f"/v1/jobs/{job_id}/matches.png", params={"top": top, "photo": photo})
    assert answer.status_code == 200, answer.text
    return cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_COLOR)


def test_the_job_page_shows_the_job_and_its_images(api_stack, browser, tmp_path):
    job = _done_job(api_stack)
    # The test map records no camera, so no placement and no heading: give the stored job one
    # (-30 degrees) to see the page read it.
    with api_stack.stack.db().session() as s:
        queries.get_job(s, job["id"]).heading = job["heading"] = math.radians(-30.0)
    browser.call("Network.clearBrowserCookies")
    page = f"{api_stack.url}/jobs/{job['id']}"

    # Without the cookie the page sends people to the login form; a wrong key stays there.
    browser.navigate(page)
    assert browser.evaluate("location.pathname") == "/login"
    sign_in = "document.getElementById('sign-in').click()"
    browser.submit(f"document.getElementById('key').value = 'flk_wrong'; {sign_in}")
    assert browser.evaluate("location.pathname") == "/login"
    assert "not valid" in browser.evaluate("document.getElementById('error').textContent")

    key_js = f"document.getElementById('key').value = '{api_stack.token}'"
    browser.submit(f"{key_js}; {sign_in}")
    assert browser.evaluate("location.href") == page
    cookies = {c["name"]: c for c in browser.call("Network.getCookies")["cookies"]}
    assert cookies[COOKIE]["httpOnly"] and cookies[COOKIE]["sameSite"] == "Strict"

    text = lambda element: browser.evaluate(f"document.getElementById('{element}').textContent")  # noqa: E731
    assert text("job-id") == job["id"]
    assert text("status") == "done" and text("map") == MAP
    assert text("x") == f"{job['x']:.2f}" and text("y") == f"{job['y']:.2f}"
    assert text("confidence") == f"{job['confidence']:.2f}"
    assert text("localised") == "yes"
    assert text("heading") == heading_text(job["heading"]) == "330°"
    assert text("profile-used") == job["profile_used"] == "fast"
    assert text("calibration").startswith("confidence uncalibrated")  # the map is not fitted
    rows = browser.evaluate("document.querySelectorAll('#candidates tr').length")
    shown = min(len(job["candidates"]), CANDIDATE_ROWS)
    assert rows == 1 + shown
    note = text("candidates-note")
    if shown < len(job["candidates"]):
        assert f"{shown} with most inliers of {len(job['candidates'])}" in note, note
    else:
        assert f"All {shown} candidates" in note, note

    sizes = browser.evaluate(
        "['matches', 'plot'].map(i => [document.getElementById(i).naturalWidth,"
        " document.getElementById(i).naturalHeight, document.getElementById(i).clientWidth])"
    )
    drawn = min(FIGURE_TOP, _kept(api_stack, job["id"]))
    assert drawn >= 1 and sizes[0][:2] == list(figure_size(drawn)), sizes
    # Shown unscaled: a caption's capital letters stay above 12 px on the screen.
    cap_height = cv2.getTextSize("X", FONT, FONT_SCALE, 1)[0][1]
    assert cap_height * sizes[0][2] / sizes[0][0] >= 12, sizes
    assert sizes[1][0] > 0 and sizes[1][1] > 0
    shot = browser.screenshot(tmp_path / "job-page.png")
    assert shot.stat().st_size > 10_000
    if os.environ.get("FEATURELOC_SCREENSHOT_DIR"):  # for a person to look at
        shutil.copy(shot, Path(os.environ["FEATURELOC_SCREENSHOT_DIR"]) / shot.name)


def test_a_photo_sets_page_shows_every_photo_with_its_matches(api_stack, browser):
    """One figure per photo of a set, each drawn from that photo's own kept inliers, captioned
    with its yaw; a photo the set does not have is a 404."""
    photos = [p.read_bytes() for p in api_stack.query_photos()[:3]]
    files = [("photo", (f"p{n}.jpg", data, "image/jpeg")) for n, data in enumerate(photos)]
    with api_stack.client() as http:
        post = http.post(f"/v1/maps/{MAP}/jobs", files=files, data={"yaws": "[0, 72, 144]"})
        assert post.status_code == 202, post.text
        job = http.get(post.headers["location"], params={"wait": 120}).json()
        missing = http.get(f"/v1/jobs/{job['id']}/matches.png", params={"photo": 3})
    assert job["status"] == "done" and job["photos"] == 3
    assert [p["yaw"] for p in job["set_photos"]] == [0.0, 72.0, 144.0]
    assert all(p["x"] is not None and p["localised"] is not None for p in job["set_photos"])
    assert missing.status_code == 404 and "3 photo(s)" in missing.json()["detail"]

    with api_stack.stack.db().session() as s:
        kept = unpack_inliers(queries.get_job(s, job["id"]).figure_inliers)
    assert len(kept) == 3 and len({k.query_key for k in kept}) == 3, "each photo its own image"
    figures = [_png(api_stack, job["id"], photo=n) for n in range(3)]
    for figure, photo_kept in zip(figures, kept, strict=True):
        rows = min(FIGURE_TOP, len(photo_kept.inliers))
        assert figure.shape[1::-1] == figure_size(rows), "the photo's own rows"
    assert not np.array_equal(figures[0], figures[1]), "photo 2's figure is not photo 1's"
    with api_stack.client() as http:
        plot = http.get(f"/v1/jobs/{job['id']}/plot.svg").text
    assert plot.count('class="photo-answer"') == 3, "each photo's own answer on the plot"

    browser.call("Network.clearBrowserCookies")
    browser.navigate(f"{api_stack.url}/login?next=/jobs/{job['id']}")
    browser.submit(
        f"document.getElementById('key').value = '{api_stack.token}';"
        " document.getElementById('sign-in').click()"
    )
    shown = browser.evaluate(
        "[...document.querySelectorAll('img.matches')].map(i => [i.complete && i.naturalWidth,"
        " i.naturalHeight, i.closest('figure').querySelector('figcaption').textContent])"
    )
    assert [(w, h) for w, h, _ in shown] == [f.shape[1::-1] for f in figures], shown
    captions = [" ".join(c.split()) for _, _, c in shown]
    for n, (caption, yaw) in enumerate(zip(captions, (0, 72, 144), strict=True), 1):
        assert caption.startswith(f"Photo {n} of 3 (yaw {yaw}\u00b0 from photo 1)"), caption
    assert "A photo set of 3 photos" in browser.evaluate(
        "document.getElementById('set-note').textContent"
    )


def test_the_cookie_reads_but_never_submits(api_stack):
    photo = api_stack.query_photos()[2].read_bytes()
    with httpx.Client(base_url=api_stack.url, cookies={COOKIE: api_stack.token}) as http:
        assert http.get("/v1/maps").status_code == 200
        post = http.post(f"/v1/maps/{MAP}/jobs", files={"photo": ("q.jpg", photo)})
        assert post.status_code == 401, "a cross-site form could submit jobs with the cookie"


def test_the_login_form_redirects_only_within_the_site(api_stack):
    with httpx.Client(base_url=api_stack.url) as http:
        for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
            answer = http.post("/login", data={"key": api_stack.token, "next": target})
            assert answer.status_code == 303
            assert answer.headers["location"] == "/login"


def test_the_figure_shows_exactly_what_the_job_recorded(api_stack):
    """Each reference once, with the inliers and matches its candidate row records; the same
    figure through the API as through workers/figures.py (featureloc draw's path)."""
    job = _done_job(api_stack, api_stack.query_photos()[2].read_bytes())
    client = api_stack.stack.client()
    figure = job_figure(client, job["id"], api_stack.scene / "images", FIGURE_REFERENCES)
    recorded = {(c["stage"], c["reference_id"]): c for c in job["candidates"]}
    assert figure.drawn and not figure.missing and figure.note is None
    assert len({m.reference_id for m in figure.drawn}) == len(figure.drawn)
    for m in figure.drawn:
        row = recorded[(m.stage, m.reference_id)]
        assert (len(m), m.tentative) == (row["inliers"], row["tentative_matches"])
    best = max(job["candidates"], key=lambda c: c["inliers"])
    assert best["reference_id"] in {m.reference_id for m in figure.drawn}
    png = _png(api_stack, job["id"], FIGURE_REFERENCES)
    assert png.shape[:2] == figure.image.shape[:2]
    assert np.abs(png.astype(int) - figure.image.astype(int)).max() == 0


def test_a_large_upload_gets_a_figure_of_the_capped_size(api_stack):
    """A query at the pixel limit (the tiny map's references are 240x180) is drawn on the figure
    every job gets, not on a canvas of its own size."""
    photo = cv2.imread(str(api_stack.query_photos()[1]))
    scale = (MAX_IMAGE_PIXELS / (photo.shape[0] * photo.shape[1])) ** 0.5 * 0.99
    large = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    ok, data = cv2.imencode(".jpg", large, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok and large.shape[1] > 1500
    job = _done_job(api_stack, data.tobytes())
    png = _png(api_stack, job["id"])
    drawn = min(FIGURE_TOP, _kept(api_stack, job["id"]))
    assert (png.shape[1], png.shape[0]) == figure_size(drawn)


def _pending_job(api_stack) -> str:
    """A job as the API stores it before a worker takes it (its photo in the blob store)."""
    client = api_stack.stack.client()
    key = client.blobs.put(api_stack.query_photos()[3].read_bytes())
    job_id = f"pending-{uuid.uuid4().hex[:12]}"
    with api_stack.stack.db().session() as s:
        s.add(Job(id=job_id, map_name=MAP, image_key=key, options={}, status="pending"))
    return job_id


def _signed_in(api_stack, browser) -> None:
    browser.call("Network.clearBrowserCookies")
    browser.call(
        "Network.setCookie", name=COOKIE, value=api_stack.token, url=api_stack.url, httpOnly=True
    )


def _wait_through_reloads(browser, expression: str, timeout: float = 20.0) -> None:
    """Wait for ``expression`` while the page reloads itself (a script may find no page)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if browser.evaluate(expression):
                return
        except RuntimeError:  # between two documents
            pass
        time.sleep(0.2)
    raise TimeoutError(f"still false after {timeout} s: {expression}")


def test_an_unfinished_jobs_page_refreshes_itself(api_stack, browser):
    """It shows the job done once the result is stored, with no reload by hand. The job has
    no kept inliers (as a job stored before they were kept): its figure is the query alone."""
    job_id = _pending_job(api_stack)
    _signed_in(api_stack, browser)
    browser.navigate(f"{api_stack.url}/jobs/{job_id}")
    status = "document.getElementById('status').textContent"
    assert browser.evaluate(status) == "pending"
    with api_stack.stack.db().session() as s:
        queries.save_result(
            s,
            job_id,
            x=1.0,
            y=2.0,
            confidence=0.5,
            localised=True,
            timings={},
            matcher="nn",
            worker=None,
            candidates=[],
        )
    _wait_through_reloads(browser, f"{status} === 'done'")
    browser.wait_for_page()
    size = browser.evaluate(
        "[document.getElementById('matches').naturalWidth,"
        " document.getElementById('matches').naturalHeight]"
    )
    assert size == list(figure_size(0))
    figure = job_figure(api_stack.stack.client(), job_id, api_stack.scene / "images", 3)
    assert figure.note == NOT_KEPT and not figure.drawn


def test_an_unknown_job_gets_a_page_not_json(api_stack, browser):
    _signed_in(api_stack, browser)
    browser.navigate(f"{api_stack.url}/jobs/no-such-job")
    assert browser.evaluate("document.getElementById('missing').textContent") == "No such job"
    with httpx.Client(base_url=api_stack.url, cookies={COOKIE: api_stack.token}) as http:
        answer = http.get("/jobs/no-such-job")
    assert answer.status_code == 404 and answer.headers["content-type"].startswith("text/html")
