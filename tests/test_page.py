"""The demo page in a real headless Chromium: every open page updates itself, no polling."""

from __future__ import annotations

from conftest import Demo, rest
from playwright.sync_api import Browser, Page, expect


def open_page(browser: Browser, url: str, requests: list[str] | None = None) -> Page:
    """A new page on the demo, live; ``requests`` collects "METHOD URL" of what it asks."""
    page = browser.new_page()
    requests = [] if requests is None else requests
    page.on("request", lambda request: requests.append(f"{request.method} {request.url}"))
    page.goto(url + "/")
    expect(page.locator("#state")).to_have_text("live", timeout=5000)
    return page


def test_two_pages_stay_in_step_without_polling(browser: Browser, demo: Demo) -> None:
    url = demo.url
    asked: tuple[list[str], list[str]] = ([], [])
    first, second = open_page(browser, url, asked[0]), open_page(browser, url, asked[1])

    # A user created through the REST API appears on both pages.
    ada = rest(
        url + "/users",
        "POST",
        {"name": "Ada", "email": "ada@example.com", "password": "analytical"},
    )
    for page in (first, second):
        expect(page.locator(f'li[data-id="{ada["id"]}"] .name')).to_have_text("Ada", timeout=1000)

    # A user created through the first page's form appears on the second.
    first.fill("input[name=name]", "Grace")
    first.fill("input[name=email]", "grace@example.com")
    first.fill("input[name=password]", "compilers")
    first.click("text=Add user")
    expect(second.locator("li .name", has_text="Grace")).to_be_visible(timeout=1000)

    # Renaming through the second page's own button shows on the first.
    second.once("dialog", lambda dialog: dialog.accept("Ada King"))
    second.locator(f'li[data-id="{ada["id"]}"] >> text=Rename').click()
    expect(first.locator(f'li[data-id="{ada["id"]}"] .name')).to_have_text("Ada King", timeout=1000)

    # An update and a delete through REST.
    rest(f"{url}/users/{ada['id']}", "POST", {"email": "king@example.com"})
    expect(second.locator(f'li[data-id="{ada["id"]}"] .email')).to_have_text(
        "king@example.com", timeout=1000
    )
    rest(f"{url}/users/{ada['id']}", "DELETE")
    for page in (first, second):
        expect(page.locator(f'li[data-id="{ada["id"]}"]')).to_have_count(0, timeout=1000)
        expect(page.locator("li")).to_have_count(1)

    # No polling: each page fetched the list once, when it loaded.
    for page, requests in zip((first, second), asked, strict=True):
        fetched = [r for r in requests if r.startswith("GET ") and r.endswith("/users")]
        assert len(fetched) == 1, fetched
        page.close()


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
