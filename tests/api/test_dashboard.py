"""The dashboard's pages and assets are served by the app itself (no CDN)."""

from __future__ import annotations

import re

from flask.testing import FlaskClient


def test_index_is_html_for_browsers_and_json_for_clients(client: FlaskClient) -> None:
    page = client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert 'id="submit-form"' in html and 'id="jobs"' in html and 'id="health"' in html
    # Every script and stylesheet is ours: nothing is fetched from another host.
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
    assert assets and all(a.startswith("/static/") for a in assets)
    for asset in assets:
        resp = client.get(asset)
        assert resp.status_code == 200
        resp.close()  # a static file is streamed from an open file
    data = client.get("/", headers={"Accept": "application/json"}).get_json()
    assert data["service"] == "mlstockprediction" and "GET /metrics" in data["endpoints"]


def test_pages(client: FlaskClient) -> None:
    page = client.get("/forecast/abc", headers={"Accept": "text/html"})
    assert page.status_code == 200 and 'mlstock.forecastPage("abc")' in page.get_data(True)
    assert client.get("/segments").status_code == 200
    missing = client.get("/nope", headers={"Accept": "text/html"})
    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
