"""The dashboard in a real headless Chromium: submit a predict through the form, wait for
it, check the forecast chart and its bands; promote and roll back on the models page;
save screenshots under bench/results/."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack
from tests.registry_helpers import copy_version
from tests.served import Served, api_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "bench" / "results"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def chromium() -> str:
    """Return the system Chromium's path, or skip saying why there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on PATH: `apt-get install -y chromium` (.ci/run does this)")


@contextlib.contextmanager
def browser_page(width: int) -> Iterator[Any]:
    """Open a page of headless Chromium `width` pixels wide and yield it; at the end, unless
    the test failed before, assert the page raised no script error."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    browser_path = chromium()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
            assert not errors, errors
        finally:
            browser.close()


def test_predict_through_the_form_shows_the_bands(api_server: Served, stack: Stack) -> None:  # noqa: F811
    ticker = stack.tickers()[0]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with browser_page(width=1100) as page:
        page.goto(api_server.url + "/")
        page.wait_for_selector("#health .chip.ok")
        page.wait_for_selector("#jobs tbody tr")
        page.screenshot(path=str(SCREENSHOTS / "dashboard_jobs.png"), full_page=True)
        page.select_option("#job-type", "predict")
        page.fill("#tickers", ticker)
        page.fill("#horizon", "5")
        page.click("#submit")
        page.wait_for_url("**/forecast/*")
        page.wait_for_selector("body[data-ready=true]", timeout=60_000)
        chart = page.locator("svg.chart")
        assert chart.count() == 1
        for band in ("band-95", "band-80", "history", "forecast"):
            d = chart.locator(f"path.{band}").get_attribute("d") or ""
            assert d.startswith("M") and d.count("L") >= 5, (band, d)
        assert page.locator("table.steps tbody tr").count() == 5
        assert ticker in page.locator("#charts h3").inner_text()
        page.screenshot(path=str(SCREENSHOTS / "dashboard_forecast.png"), full_page=True)
        # The job shows up on the jobs page, succeeded.
        job_id = page.url.rsplit("/", 1)[1]
        page.goto(api_server.url + "/")
        row = page.locator(f'#jobs tr[data-job="{job_id}"]')
        row.wait_for()
        assert "succeeded" in row.inner_text()
        # A bad ticker is refused in the form with the field named, no navigation.
        page.fill("#tickers", "NO_SUCH")
        page.click("#submit")
        page.wait_for_selector("#form-error:not(:empty)")
        assert "ticker" in page.locator("#form-error").inner_text()
        page.goto(api_server.url + "/segments")
        page.click("#run-segment")
        page.wait_for_selector("svg.scatter circle", timeout=60_000)
        page.screenshot(path=str(SCREENSHOTS / "dashboard_segments.png"), full_page=True)


def _http(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def _listing(base: str, name: str, *versions: str, timeout: float = 40) -> dict[str, Any]:
    """Return GET /models/<name> once it has a current version and lists `versions`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            model = _http(f"{base}/models/{name}")
            listed = {v["version"] for v in model["versions"]}
            if model["current"] and set(versions) <= listed:
                return model
        except urllib.error.HTTPError:
            pass  # not published yet
        assert time.monotonic() < deadline, f"{name} {versions} never listed"
        time.sleep(0.5)


def test_models_page_promotes_and_rolls_back(api_server: Served, stack: Stack) -> None:  # noqa: F811
    base = api_server.url
    original = _listing(base, "forecast")["current"]
    _listing(base, "segment")
    # Two more versions of the forecaster, saved as a retrain would (newest first in the
    # listing): a good one, and an unsigned one every worker must refuse.
    newer = copy_version(stack.artifacts, "forecast")
    unsigned = copy_version(stack.artifacts, "forecast", key=None)
    _listing(base, "forecast", newer, unsigned)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    forecast_sel = 'section[data-model="forecast"]'
    try:
        with browser_page(width=1400) as page:
            page.goto(base + "/")
            page.click("nav >> text=Models")
            page.wait_for_url("**/registry")
            page.wait_for_selector(f"{forecast_sel} tr.current")
            page.wait_for_selector("#health .chip.ok")
            for name in ("forecast", "segment"):
                section = page.locator(f'section[data-model="{name}"]')
                versions = [r.get_attribute("data-version") or ""
                            for r in section.locator("tbody tr").all()]  # fmt: skip
                assert versions and versions == sorted(versions, reverse=True), versions
                current = section.locator("tr.current")
                assert current.count() == 1
                assert current.locator(".current-badge").inner_text() == "current"
                assert current.locator("button.promote").count() == 0
                assert section.locator("button.promote").count() == len(versions) - 1
            forecast = page.locator(forecast_sel)
            row = forecast.locator("tr.current")
            assert row.get_attribute("data-version") == original
            for key in ("relative_mase", "coverage_80", "coverage_95", "point", "shrinkage"):
                assert row.locator(f'[data-metric="{key}"]').count() == 1, key
            assert "%" in row.locator('[data-metric="coverage_80"]').inner_text()
            segment = page.locator('section[data-model="segment"] tr.current')
            assert segment.locator('[data-metric="n_segments"]').count() == 1

            # Refused: the problem's detail is shown and the current version stays.
            forecast.locator(f'tr[data-version="{unsigned}"] button.promote').click()
            page.wait_for_selector(f"{forecast_sel} .error:not(:empty)", timeout=60_000)
            assert "missing signature" in forecast.locator(".error").inner_text()
            assert forecast.locator("tr.current").get_attribute("data-version") == original

            # Promote the newer version, with a reason: the current marker moves to it.
            page.fill("#promote-reason", "browser test promotion")
            forecast.locator(f'tr[data-version="{newer}"] button.promote').click()
            page.wait_for_selector(f'{forecast_sel} tr.current[data-version="{newer}"]',
                                   timeout=60_000)  # fmt: skip
            assert forecast.locator("tr.current").count() == 1
            assert "promoted " + newer in forecast.locator(".note").inner_text()
            promoted = forecast.locator("tr.current td.why").inner_text()
            assert "browser test promotion" in promoted and "anonymous" in promoted
            model = _http(f"{base}/models/forecast")
            assert model["current"] == newer
            assert model["history"][0]["reason"] == "browser test promotion"

            # The original is older now: its button is a rollback. Click it.
            page.fill("#promote-reason", "")
            back = forecast.locator(f'tr[data-version="{original}"]')
            assert "rollback" in back.locator("td.action").inner_text()
            back.locator("button.promote").click()
            page.wait_for_selector(f'{forecast_sel} tr.current[data-version="{original}"]',
                                   timeout=60_000)  # fmt: skip
            assert "rolled back to " + original in forecast.locator(".note").inner_text()
            assert "rolled back via the API" in back.locator("td.why").inner_text()
            assert _http(f"{base}/models/forecast")["current"] == original
            page.click(f"{forecast_sel} details.history-list summary")
            page.screenshot(path=str(SCREENSHOTS / "dashboard_models.png"), full_page=True)
    finally:
        # Whatever happened above, leave the original serving for the other tests.
        if _http(f"{base}/models/forecast")["current"] != original:
            _http(f"{base}/models/forecast/promote", {"version": original})


def test_docs_render_every_operation_offline(api_server: Served) -> None:  # noqa: F811
    spec = _http(api_server.url + "/openapi.json")
    operations = {(method.upper(), path) for path, item in spec["paths"].items()
                  for method in item}  # fmt: skip
    outside: list[str] = []

    def only_this_server(route: Any) -> None:
        if route.request.url.startswith(api_server.url + "/"):
            route.continue_()
        else:  # a CDN, a validator, fonts: the page must not need any of them
            outside.append(route.request.url)
            route.abort()

    with browser_page(width=1200) as page:
        page.route("**/*", only_this_server)
        page.goto(api_server.url + "/docs")
        page.wait_for_selector(".opblock")
        shown = {
            ((block.locator(".opblock-summary-method").inner_text()).strip(),
             block.locator(".opblock-summary-path").get_attribute("data-path") or "")
            for block in page.locator(".opblock").all()
        }  # fmt: skip
        assert shown == operations
        assert "mlstockprediction" in page.locator(".info .title").inner_text()
        # An operation opens with its responses, problem+json among them.
        page.locator("#operations-jobs-post_jobs_predict .opblock-summary").click()
        page.wait_for_selector("#operations-jobs-post_jobs_predict .responses-table")
        body = page.locator("#operations-jobs-post_jobs_predict").inner_text()
        assert "202" in body and "422" in body and "application/problem+json" in body
        page.screenshot(path=str(SCREENSHOTS / "docs.png"), full_page=False)
    assert outside == []
