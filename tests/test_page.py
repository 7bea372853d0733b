"""The demo page in a real headless Chromium: its form and errors, the empty state, inline
renaming and the delete that asks once more (never a browser dialog).

Pages staying in step (over WebSocket and over the SSE fallback) are in test_live_js.py.
"""

from __future__ import annotations

import re

import pytest
from helpers import Demo, rest
from playwright.sync_api import Browser, Dialog, Page, expect

ADA = {"name": "Ada", "email": "ada@example.com", "password": "p4ssw0rd"}


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


def writes(requests: list[str]) -> list[str]:
    """The page's POSTs and DELETEs, as "METHOD /path"."""
    return [
        f"{method} /{url.split('/', 3)[3]}"
        for method, url in (request.split(" ", 1) for request in requests)
        if method in ("POST", "DELETE") and "/live" not in url
    ]


def test_the_empty_state_says_what_to_do(browser: Browser, demo: Demo) -> None:
    page = open_page(browser, demo.url)
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#empty")).to_contain_text("No users yet — add the first one")
    page.click("text=add the first one")
    expect(page.locator("input[name=name]")).to_be_focused()
    ada = rest(demo.url + "/users", "POST", ADA)
    expect(page.locator("li .name")).to_have_text(["Ada"], timeout=1000)
    expect(page.locator("#empty")).to_be_hidden()
    expect(page.locator("#count")).to_have_text("1")
    rest(f"{demo.url}/users/{ada['id']}", "DELETE")
    expect(page.locator("#empty")).to_be_visible(timeout=1000)
    expect(page.locator("li")).to_have_count(0)
    expect(page.locator("#count")).to_have_text("0")
    page.close()


def test_a_name_is_edited_in_place(browser: Browser, demo: Demo) -> None:
    """Click the name (or Rename): an input in its place; Enter or leaving it saves, Escape
    cancels; never a prompt()."""
    requests: list[str] = []
    page = open_page(browser, demo.url, requests)
    dialogs: list[str] = []

    def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    ada = rest(demo.url + "/users", "POST", ADA)
    row = page.locator(f'li[data-id="{ada["id"]}"]')
    editor = row.locator("input.name-edit")

    row.locator(".name").click()  # Escape: nothing sent, the name as it was
    expect(editor).to_be_focused()
    expect(editor).to_have_value("Ada")
    editor.fill("Nobody")
    editor.press("Escape")
    expect(editor).to_have_count(0)
    expect(row.locator(".name")).to_have_text("Ada")
    expect(row.locator(".name")).to_be_focused()

    row.locator("text=Rename").click()  # Enter saves
    editor.fill("  Ada King ")
    editor.press("Enter")
    expect(row.locator(".name")).to_have_text("Ada King", timeout=1000)
    assert rest(f"{demo.url}/users/{ada['id']}")["name"] == "Ada King"

    row.locator(".name").click()  # so does leaving the field
    editor.fill("Ada Lovelace")
    page.locator("#people-title").click()
    expect(row.locator(".name")).to_have_text("Ada Lovelace", timeout=1000)
    expect(editor).to_have_count(0)

    row.locator(".name").click()  # an empty name is no rename
    editor.fill("   ")
    editor.press("Enter")
    expect(row.locator(".name")).to_have_text("Ada Lovelace")
    assert writes(requests) == [f"POST /users/{ada['id']}"] * 2
    assert dialogs == []
    page.close()


def test_delete_asks_once_more_without_a_dialog(browser: Browser, demo: Demo) -> None:
    requests: list[str] = []
    page = open_page(browser, demo.url, requests)
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog: {dialog.message}"))
    ada = rest(demo.url + "/users", "POST", ADA)
    delete = page.locator(f'li[data-id="{ada["id"]}"] .delete')
    delete.click()
    expect(delete).to_have_text("Sure?")
    expect(delete).to_have_text("Delete", timeout=4000)  # not confirmed within 3 s: as it was
    assert writes(requests) == []
    delete.click()
    expect(delete).to_have_text("Sure?")
    page.wait_for_timeout(450)  # a double click is not a yes; a second click is
    delete.click()
    expect(page.locator("li")).to_have_count(0, timeout=1000)
    expect(page.locator("#empty")).to_be_visible()
    assert writes(requests) == [f"DELETE /users/{ada['id']}"]
    assert rest(demo.url + "/users") == []
    page.close()


def test_the_form_says_what_is_wrong_under_each_field(browser: Browser, demo: Demo) -> None:
    requests: list[str] = []
    page = open_page(browser, demo.url, requests)
    page.fill("input[name=email]", "ada.example.com")
    expect(page.locator("#email-msg")).to_have_text("")  # not while typing
    page.locator("input[name=password]").focus()  # leaving the field checks it
    expect(page.locator("#email-msg")).to_have_text("Not an e-mail address.")
    expect(page.locator("input[name=email]")).to_have_attribute("aria-invalid", "true")
    page.click("text=Add user")  # nothing sent; a message under every field, the first focused
    expect(page.locator("#name-msg")).to_have_text("Give the user a name.")
    expect(page.locator("#password-msg")).to_have_text("At least 8 characters.")
    expect(page.locator("input[name=name]")).to_be_focused()
    page.fill("input[name=name]", "Ada")  # a problem goes as soon as it is fixed
    expect(page.locator("#name-msg")).to_have_text("")
    page.fill("input[name=password]", "p4ss")  # and one shown follows what is typed
    expect(page.locator("#password-msg")).to_have_text("Too short: 4 of 8.")
    page.fill("input[name=email]", "")
    expect(page.locator("#email-msg")).to_have_text("Needs an e-mail address.")
    assert writes(requests) == []

    page.fill("input[name=email]", "ada@example.com")
    page.fill("input[name=password]", "p4ssw0rd")
    page.click("text=Add user")
    expect(page.locator("li .name")).to_have_text(["Ada"], timeout=1000)
    for field in ("name", "email", "password"):
        expect(page.locator(f"input[name={field}]")).to_have_value("")
        expect(page.locator(f"#{field}-msg")).to_have_text("")
    expect(page.locator("input[name=name]")).to_be_focused()  # ready for the next one
    assert writes(requests) == ["POST /users"]
    page.close()
