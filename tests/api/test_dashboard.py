"""The dashboard's pages and assets are served by the app itself (no CDN)."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

from api import create_app
from worker.config import Settings


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


def test_models_page_is_a_public_shell() -> None:
    """The page holds no data: it is served without a key, the JSON listing is not."""
    keyed = create_app(Settings(redis_url="redis://127.0.0.1:1/0", api_keys="k-1:read"))
    client = keyed.test_client()
    page = client.get("/registry", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "mlstock.modelsPage()" in html and 'id="models"' in html
    assert 'href="/registry" class="on"' in html  # the nav link, marked on its own page
    assert client.get("/models").status_code == 401
    assert 'href="/registry"' in client.get("/", headers={"Accept": "text/html"}).get_data(True)
