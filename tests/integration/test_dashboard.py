"""The dashboard at ``GET /`` in a real headless Chromium (Debian's ``chromium``, driven by
Playwright): orders appear and change live, an order's history, the figures."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from es_orders.query import create_query_app
from es_orders.query.dashboard import STATIC_DIR
from tests.integration.service_support import Service
from tests.unit.query_support import InMemoryView

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ORDER = {"user_id": "u1", "product_id": "57", "quantity": 2, "price": 1299}


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    # Playwright's own browser download is not used: the system's Chromium is.
    launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
    yield launched
    launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert errors == [], errors  # no script error on the page


def post(command: Service, path: str, body: dict[str, object]) -> None:
    response = httpx.post(f"{command.url}{path}", json=body, timeout=30)
    assert response.status_code in (200, 201), response.text


@pytest.mark.integration
def test_an_order_appears_then_changes_without_a_reload(
    start_query: Callable[..., Service], start_command: Callable[..., Service], page: Page
) -> None:
    query = start_query()
    command = start_command("--no-simulate")
    query.wait_ready()
    command.wait_ready()
    post(command, "/orders", {"id": "before", **ORDER})  # in the first page, not a change

    page.goto(f"{query.url}/")
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator('#orders tr[data-id="before"]')).to_be_visible()
    page.evaluate("window.sameDocument = true")  # gone if the page were loaded again

    post(command, "/orders", {"id": "web-1", **ORDER})
    row = page.locator('#orders tr[data-id="web-1"]')
    expect(row).to_be_visible(timeout=5000)
    expect(row.locator('td[data-field="price"]')).to_have_text("1299")
    expect(row.locator('td[data-field="version"]')).to_have_text("1")
    # The changed order goes to the top.
    expect(page.locator("#orders tbody tr").first).to_have_attribute("data-id", "web-1")

    post(command, "/orders/web-1/price", {"price": 1199})
    expect(row.locator('td[data-field="price"]')).to_have_text("1199", timeout=5000)
    expect(row.locator('td[data-field="version"]')).to_have_text("2")
    post(command, "/orders/web-1/cancel", {"reason": "test"})
    expect(row.locator('td[data-field="status"]')).to_have_text("cancelled", timeout=5000)
    assert page.evaluate("window.sameDocument") is True
    expect(page.locator('#orders tr[data-id="web-1"]')).to_have_count(1)

    # The figures, from /stats and /cluster.
    expect(page.locator("#member-count")).to_have_text("1")
    expect(page.locator("#partitions tbody tr")).to_have_count(3)
    expect(page.locator("#dead-letters")).to_have_text("0")
    expect(page.locator("#rate")).to_have_text(re.compile(r"^\d+$"))

    # Its history, as a timeline: one entry per event, in version order.
    row.click()
    expect(page.locator("#history-order")).to_have_text("web-1")
    entries = page.locator("#history li")
    expect(entries).to_have_count(3, timeout=10_000)
    expect(entries.nth(0)).to_contain_text("v1 OrderCreated")
    expect(entries.nth(1)).to_contain_text("v2 PriceChanged")
    expect(entries.nth(1)).to_contain_text("price: 1199")
    expect(entries.nth(2)).to_contain_text("v3 OrderCancelled")

    # A service whose history is off says so, and the page shows it.
    off = {"type": "about:blank", "title": "Not Implemented", "status": 501}
    off["detail"] = "history is off on this instance"
    page.route(
        re.compile(r".*/orders/[^/]+/events.*"),
        lambda route: route.fulfill(
            status=501, content_type="application/problem+json", body=json.dumps(off)
        ),
    )
    page.locator('#orders tr[data-id="before"]').click()
    expect(page.locator("#history-note")).to_have_text("history is off on this instance")
    expect(entries).to_have_count(0)


def test_the_page_and_its_files_come_from_the_package_and_nothing_from_elsewhere() -> None:
    client = TestClient(create_query_app(InMemoryView()))
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        served = client.get(f"/static/{name}")
        assert served.status_code == 200
        assert kind in served.headers["content-type"]
        assert served.text == (STATIC_DIR / name).read_text()
    assert client.get("/static/nope.js").headers["content-type"] == "application/problem+json"
    # No CDN, no font service: every URL the files name is relative.
    for path in STATIC_DIR.iterdir():
        assert re.search(r"(https?:)?//[a-z]", path.read_text()) is None, path.name
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths
    assert not any(p.startswith("/static") for p in paths)
