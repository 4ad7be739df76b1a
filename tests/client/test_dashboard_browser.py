"""The dashboard in a real headless Chromium: submit a predict through the form, wait for
it, check the forecast chart and its bands, save a screenshot under bench/results/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.client.test_client import served_tickers
from tests.conftest import Stack
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


def test_predict_through_the_form_shows_the_bands(api_server: Served, stack: Stack) -> None:  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    browser_path = chromium()
    ticker = served_tickers(stack)[0]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
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
            assert not errors, errors
        finally:
            browser.close()
