"""The demo page in a real headless Chromium: its form and errors.

Pages staying in step (over WebSocket and over the SSE fallback) are in test_live_js.py.
"""

from __future__ import annotations

import re

from helpers import Demo, rest
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


def test_the_polling_client_lags_behind_the_live_list(browser: Browser, demo: Demo) -> None:
    """Beside the live list, the same list polled every 3 s: the page shows how far behind."""
    page = open_page(browser, demo.url)
    expect(page.locator("#poll-requests")).to_have_text("1")  # the poller's first GET, on load
    rest(
        demo.url + "/users",
        "POST",
        {"name": "Ada", "email": "ada@example.com", "password": "p4ssw0rd"},
    )
    expect(page.locator("li .name")).to_have_text(["Ada"], timeout=1000)  # live: at once
    expect(page.locator("#poll-requests")).to_have_text("1")  # the poller has not asked again
    expect(page.locator("#poll-lag")).to_have_attribute("data-behind", "")
    expect(page.locator("#polled .row")).to_have_count(0)
    # Its next GET, within 3 s, catches up; the page says how long that took.
    expect(page.locator("#poll-lag")).to_have_text("in step", timeout=4000)
    expect(page.locator("#polled .row")).to_have_text(["Ada"])
    expect(page.locator("#poll-requests")).to_have_text("2")
    caught = re.fullmatch(r"(\d+\.\d) s after the live list", page.inner_text("#poll-last"))
    assert caught is not None
    assert 0 < float(caught[1]) <= 3.5
    # And the one after that is a 304: nothing changed, but it had to ask.
    expect(page.locator("#poll-unchanged")).to_have_text("1", timeout=4000)
    expect(page.locator("#poll-requests")).to_have_text("3")
    page.close()
