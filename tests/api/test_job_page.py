"""The job page in a real headless Chromium: sign in with a key, the page shows the job's numbers,
and its two images (matches and map plot) render."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from api.auth import COOKIE
from core.draw import figure_size
from tests.api.browser import Browser, chromium_path
from tests.api.conftest import MAP

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's package)")
    b = Browser(executable)
    try:
        yield b
    finally:
        b.close()


def _done_job(api_stack) -> dict:
    photo = api_stack.query_photos()[1]
    with api_stack.client() as http:
        job = http.post(f"/v1/maps/{MAP}/jobs", files={"photo": (photo.name, photo.read_bytes())})
        done = http.get(f"/v1/jobs/{job.json()['id']}", params={"wait": 60}).json()
    assert done["status"] == "done" and done["localised"], done
    return done


def test_the_job_page_shows_the_job_and_its_images(api_stack, browser, tmp_path):
    job = _done_job(api_stack)
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
    assert text("profile-used") == job["profile_used"] == "fast"
    assert text("calibration").startswith("confidence uncalibrated")  # the map is not fitted
    rows = browser.evaluate("document.querySelectorAll('#candidates tr').length")
    assert rows == 1 + min(len(job["candidates"]), 15)

    sizes = browser.evaluate(
        "['matches', 'plot'].map(i => [document.getElementById(i).naturalWidth,"
        " document.getElementById(i).naturalHeight])"
    )
    top = min(3, len(job["candidates"]))
    assert sizes[0] == list(figure_size((240, 180), [(240, 180)] * top)), sizes
    assert sizes[1][0] > 0 and sizes[1][1] > 0
    shot = browser.screenshot(tmp_path / "job-page.png")
    assert shot.stat().st_size > 10_000
    if os.environ.get("FEATURELOC_SCREENSHOT_DIR"):  # for a person to look at
        shutil.copy(shot, Path(os.environ["FEATURELOC_SCREENSHOT_DIR"]) / shot.name)


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
