"""The map report end to end: every position of a map measured on the build queue by the real
worker (``featureloc map fit --every-position --via-queue``), then the report as JSON
(``GET /v1/maps/{name}/report``, behind the keys), as the web UI's page and as the files of
``featureloc map report``, both pages opened in headless Chromium with every figure rendered,
the file with the network off. A second map of the tiny scene in the shared stack, gone after."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.heldout import HELDOUT_FILE, read_rows
from core.mapfigures import WIDTH
from core.mapstore import MapStore
from db import queries
from tests.api.conftest import MAP
from tests.support.process import run_cli
from tests.support.services import register_scene_map

pytestmark = pytest.mark.integration

REPORTED = "tiny-report"
VIEWS = 2  # of each of the tiny scene's 4 positions
FIGURES = ("plan", "coverage", "worst", "reliability")


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return run_cli(env, *args, timeout=300)


@pytest.fixture(scope="module")
def measured(api_stack) -> Iterator[MapStore]:
    """Map REPORTED, every position measured (VIEWS views each) by the stack's worker."""
    settings = api_stack.stack.settings
    register_scene_map(settings, api_stack.scene, REPORTED)
    store = MapStore(settings.maps_dir)
    store.set_images_dir(REPORTED, api_stack.scene / "images")
    try:
        queued = _cli(api_stack.stack.env, "map", "fit", REPORTED, "--every-position",
                      "--views", str(VIEWS), "--via-queue")  # fmt: skip
        assert queued.returncode == 0, queued.stdout + queued.stderr
        assert "every position queued" in queued.stdout
        deadline = time.monotonic() + 180
        while store.training(REPORTED).get("heldout_queries") != 4 * VIEWS:
            assert time.monotonic() < deadline, "the worker did not measure every position"
            time.sleep(0.5)
        yield store
    finally:
        with api_stack.stack.db().session() as s:
            s.delete(queries.get_map(s, REPORTED))
        shutil.rmtree(store.path(REPORTED))


def _check_report(data: dict) -> None:
    assert data["map"] == REPORTED and data["positions_total"] == 4
    assert data["positions_measured"] == 4 and data["views_measured"] == 4 * VIEWS
    assert len(data["positions"]) == 4
    for p in data["positions"]:
        assert p["views_measured"] == VIEWS and p["error"] >= 0
        assert isinstance(p["localised"], bool)
    assert isinstance(data["holes"], list) and isinstance(data["suggestions"], list)
    assert data["worst"] and data["worst"][0]["error"] == max(w["error"] for w in data["worst"])


def test_every_position_measured_on_the_queue_is_served_as_json(api_stack, measured) -> None:
    rows = read_rows(measured.path(REPORTED) / HELDOUT_FILE)
    assert len(rows) == 4 * VIEWS == len({r.reference_id for r in rows})
    assert all(r.matched is not None for r in rows)
    with api_stack.client() as http:
        answer = http.get(f"/v1/maps/{REPORTED}/report")
        assert answer.status_code == 200, answer.text
        _check_report(answer.json())
        never = http.get(f"/v1/maps/{MAP}/report")  # a map never measured
        assert never.status_code == 409 and f"featureloc map fit {MAP}" in never.json()["detail"]
        assert http.get("/v1/maps/no-such-map/report").status_code == 404
        assert http.get(f"/v1/maps/{REPORTED}/report?profile=bogus").status_code == 422
    with api_stack.client(api_stack.other_token) as http:
        assert http.get(f"/v1/maps/{REPORTED}/report").status_code == 403
    with api_stack.client("flk_wrong") as http:
        assert http.get(f"/v1/maps/{REPORTED}/report").status_code == 401


def _figures_rendered(browser) -> list[list[int]]:
    return browser.evaluate(
        "Array.from(document.querySelectorAll('img')).map(i => [i.id, i.naturalWidth,"
        " i.naturalHeight, i.src.startsWith('data:image/png;base64,') ? 1 : 0])"
    )


def test_the_report_page_shows_every_figure(api_stack, measured, browser) -> None:
    browser.call("Network.clearBrowserCookies")
    page = f"{api_stack.url}/maps/{REPORTED}/report"
    browser.navigate(page)
    assert browser.evaluate("location.pathname") == "/login"  # no key: the login form
    browser.submit(
        f"document.getElementById('key').value = '{api_stack.token}';"
        " document.getElementById('sign-in').click()"
    )
    assert browser.evaluate("location.href") == page
    shown = _figures_rendered(browser)
    assert sorted(s[0] for s in shown) == sorted(FIGURES)
    assert all(s[1] == WIDTH and s[2] > 100 and s[3] == 1 for s in shown), shown
    assert browser.evaluate("document.getElementById('map').textContent") == REPORTED
    browser.navigate(f"{api_stack.url}/maps/{MAP}/report")  # never measured: what to run
    reason = browser.evaluate("document.getElementById('reason').textContent")
    assert f"featureloc map fit {MAP} --every-position" in reason


def test_map_report_writes_a_page_that_opens_offline(api_stack, measured, browser, tmp_path):
    out = tmp_path / "report"
    done = _cli(api_stack.stack.env, "map", "report", REPORTED, "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert {p.name for p in out.iterdir()} == {"report.html", "report.json"} | {
        f"{f}.png" for f in FIGURES
    }
    _check_report(json.loads((out / "report.json").read_text()))
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    browser.call("Network.enable")
    browser.call("Network.emulateNetworkConditions", offline=True, latency=0,
                 downloadThroughput=-1, uploadThroughput=-1)  # fmt: skip
    try:
        browser.navigate(Path(out / "report.html").as_uri())
        shown = _figures_rendered(browser)
    finally:
        browser.call("Network.emulateNetworkConditions", offline=False, latency=0,
                     downloadThroughput=-1, uploadThroughput=-1)  # fmt: skip
    assert len(shown) == len(FIGURES) and all(s[1] == WIDTH and s[3] == 1 for s in shown), shown

    never = _cli(api_stack.stack.env, "map", "report", MAP, "--out", str(tmp_path / "never"))
    assert never.returncode != 0 and "has not been measured" in never.stdout + never.stderr
    unknown = _cli(api_stack.stack.env, "map", "report", "no-such-map", "--out", str(tmp_path))
    assert unknown.returncode != 0 and "unknown map" in unknown.stdout + unknown.stderr
