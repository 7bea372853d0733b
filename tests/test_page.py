"""The demo page in a real headless Chromium: its form and errors.

Pages staying in step (over WebSocket and over the SSE fallback) are in test_live_js.py.
"""

from __future__ import annotations

from helpers import Demo
from playwright.sync_api import Browser, Page, expect


def open_page(browser: Browser, url: str, requests: list[str] | None = None) -> Page:
    """A new page on the demo, live; ``requests`` collects "METHOD URL" of what it asks."""
    page = browser.new_page()
    requests = [] if requests is None else requests
    page.on("request", lambda request: requests.append(f"{request.method} {request.url}"))
    page.goto(url + "/")
    expect(page.locator("#state")).to_have_text("live", timeout=5000)
    return page


def test_a_bad_form_shows_the_servers_error(browser: Browser, demo: Demo) -> None:
    url = demo.url
    page = open_page(browser, url)
    page.fill("input[name=name]", "Bob")
    page.fill("input[name=email]", "bob@example")  # passes the browser's check, not the server's
    page.fill("input[name=password]", "password1")
    page.click("text=Add user")
    expect(page.locator("#error")).to_have_text(
        "email must be an e-mail address (at most 254 characters)", timeout=2000
    )
    expect(page.locator("li")).to_have_count(0)
    page.close()
