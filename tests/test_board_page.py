"""The team board page in a real headless Chromium, against the demo as a user runs it.

Two pages signed in to the red team and one to the blue team (each in a browser context
of its own, so each has its own session cookie): what one red page does shows on the
other within a second and never on the blue one; a task moved to blue leaves the red
pages and appears on the blue one. A 412 (an edit of a title someone else changed
meanwhile) and a refused claim are shown on the page.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from bson import ObjectId
from helpers import Demo, start_demo
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect
from pymongo import MongoClient

#: What "at once" means here: milliseconds for a change to show on another page.
SOON = 1000

#: A WebSocket that fails as on a network that blocks them: live.js falls back to
#: Server-Sent Events (and POSTs for its messages).
BLOCK_WEBSOCKETS = """
window.WebSocket = class BlockedWebSocket extends EventTarget {
  constructor(url) {
    super();
    setTimeout(() => {
      this.onerror?.(new Event("error"));
      this.onclose?.(new CloseEvent("close", {code: 1006, wasClean: false}));
    }, 20);
  }
  send() { throw new DOMException("Still in CONNECTING state.", "InvalidStateError"); }
  close() {}
};
"""

#: Uncaught exceptions of this test's pages (the page must never throw).
PAGE_ERRORS: list[str] = []


@pytest.fixture(autouse=True)
def _no_page_errors() -> Iterator[None]:
    PAGE_ERRORS.clear()
    yield
    assert not PAGE_ERRORS, f"a page threw: {PAGE_ERRORS}"


@pytest.fixture
def contexts(browser: Browser) -> Iterator[list[BrowserContext]]:
    """Browser contexts made by the test (each with its own cookies), closed after it."""
    made: list[BrowserContext] = []
    yield made
    for context in made:
        context.close()


def signed_in(
    contexts: list[BrowserContext],
    browser: Browser,
    url: str,
    name: str,
    team: str,
    *scripts: str,
) -> Page:
    """A page of a browser of its own, signed in to ``team`` through the page's form."""
    context = browser.new_context()
    contexts.append(context)
    for script in scripts:
        context.add_init_script(script)
    page = context.new_page()
    page.on("pageerror", lambda error: PAGE_ERRORS.append(f"{name}: {error}"))
    page.goto(url + "/board")
    page.fill("input[name=name]", name)
    page.fill("input[name=team]", team)
    page.click("#sign-in button")
    expect(page.locator("#state")).to_have_text("live", timeout=5000)
    expect(page.locator(".who .team")).to_have_text(team)
    return page


def card(page: Page, title: str) -> Locator:
    return page.locator(".card", has=page.locator(".title", has_text=title))


def column(page: Page, name: str) -> Locator:
    return page.locator(f".column[data-column={name}]")


def add(page: Page, title: str) -> None:
    page.fill("#add input[name=title]", title)
    page.click("#add button")
    expect(card(page, title)).to_be_visible(timeout=SOON)


def test_two_red_pages_and_a_blue_one(
    browser: Browser, demo: Demo, contexts: list[BrowserContext]
) -> None:
    ann = signed_in(contexts, browser, demo.url, "ann", "red")
    bob = signed_in(contexts, browser, demo.url, "bob", "red")
    cat = signed_in(contexts, browser, demo.url, "cat", "blue")
    for page in (ann, bob, cat):
        expect(column(page, "todo").locator(".empty")).to_have_text(
            "Nothing to do. Add a task above."
        )
        expect(page.locator(".card")).to_have_count(0)

    # Added on one red page: on the other within a second, never on the blue one.
    add(ann, "Buy milk")
    expect(card(bob, "Buy milk")).to_be_visible(timeout=SOON)
    add(cat, "Blue's own task")
    expect(card(ann, "Buy milk")).to_have_count(1)  # its own answer and its event: once
    for page in (ann, bob):
        expect(page.locator(".card")).to_have_count(1)
    expect(cat.locator(".card")).to_have_count(1)
    expect(card(cat, "Buy milk")).to_have_count(0)
    expect(column(ann, "todo").locator(".empty")).to_be_hidden()

    # Claimed on bob's page: ann's page says who has it.
    card(bob, "Buy milk").locator("button.claim").click()
    expect(card(ann, "Buy milk").locator(".assignee")).to_have_text("bob", timeout=SOON)
    expect(card(bob, "Buy milk").locator(".assignee")).to_have_text("you")
    expect(card(bob, "Buy milk").locator("button.release")).to_be_visible()
    expect(card(ann, "Buy milk").locator("button.claim")).to_have_count(0)

    # Done with a click on ann's page, back to "to do" by dragging on bob's.
    card(ann, "Buy milk").locator("button.check").click()
    expect(column(bob, "done").locator(".card")).to_have_count(1, timeout=SOON)
    expect(column(bob, "done").locator(".title")).to_have_text("Buy milk")
    card(bob, "Buy milk").drag_to(column(bob, "todo"))
    expect(column(ann, "todo").locator(".card")).to_have_count(1, timeout=SOON)
    expect(column(ann, "done").locator(".empty")).to_be_visible()

    # The title edited in place on ann's page: Enter saves.
    card(ann, "Buy milk").locator(".title").click()
    editor = ann.locator("input.title-edit")
    editor.fill("Buy oat milk")
    editor.press("Enter")
    expect(card(bob, "Buy oat milk")).to_be_visible(timeout=SOON)
    expect(ann.locator("input.title-edit")).to_have_count(0)

    # Moved to blue from bob's page: gone from both red pages, on the blue one.
    card(bob, "Buy oat milk").locator("select.move").select_option("blue")
    for page in (ann, bob):
        expect(page.locator(".card")).to_have_count(0, timeout=SOON)
        expect(column(page, "todo").locator(".empty")).to_be_visible()
    moved = card(cat, "Buy oat milk")
    expect(moved).to_be_visible(timeout=SOON)
    expect(moved.locator(".assignee")).to_have_text("bob")
    expect(cat.locator(".card")).to_have_count(2)
    for page in (ann, bob, cat):
        expect(page.locator("#notice")).to_be_hidden()

    # Signing out leaves the board for the sign-in form.
    ann.click("#sign-out")
    expect(ann.locator("#sign-in")).to_be_visible(timeout=5000)


def test_a_412_and_a_refused_claim_are_shown(
    browser: Browser,
    contexts: list[BrowserContext],
    mongo_server: str,
    request: pytest.FixtureRequest,
) -> None:
    database = f"board_page_{uuid.uuid4().hex[:8]}"
    demo = start_demo("--mongo", mongo_server.replace("/?", f"/{database}?"))
    request.addfinalizer(demo.stop)
    ann = signed_in(contexts, browser, demo.url, "ann", "red")
    bob = signed_in(contexts, browser, demo.url, "bob", "red")
    add(ann, "Write the report")
    task = card(ann, "Write the report").get_attribute("data-id")
    assert task is not None
    ours = ann.locator(f".card[data-id='{task}']")
    expect(card(bob, "Write the report")).to_be_visible(timeout=SOON)

    # ann starts editing; bob renames it meanwhile; ann's save is refused (412), and said so.
    ours.locator(".title").click()
    ann.locator("input.title-edit").fill("Write the final report")
    card(bob, "Write the report").locator(".title").click()
    bob.locator("input.title-edit").fill("Write the annual report")
    bob.locator("input.title-edit").press("Enter")
    expect(ours).to_have_attribute("data-version", "2", timeout=SOON)
    ann.locator("input.title-edit").press("Enter")
    notice = ann.locator("#notice")
    expect(notice).to_be_visible(timeout=SOON)
    expect(notice).to_have_attribute("data-code", "stale")
    expect(notice).to_contain_text(
        "“Write the report” was changed by someone else while you edited it (it is now "
        "“Write the annual report”): your edit was not saved."
    )
    expect(card(ann, "Write the annual report")).to_be_visible()
    expect(card(bob, "Write the final report")).to_have_count(0)

    # Someone claims it behind the pages' backs (a script writing straight to MongoDB,
    # announcing nothing): ann's Claim is refused, and the page says by whom.
    with MongoClient[dict[str, Any]](mongo_server) as client:
        client[database]["tasks"].update_one(
            {"_id": ObjectId(task)}, {"$set": {"assignee": "zed"}, "$inc": {"_version": 1}}
        )
    ours.locator("button.claim").click()
    expect(notice).to_have_attribute("data-code", "already_claimed", timeout=SOON)
    expect(notice).to_contain_text(
        "Could not claim “Write the annual report”: zed has claimed this task already"
    )
    notice.locator("button").click()
    expect(notice).to_be_hidden()


def test_the_board_over_server_sent_events(
    browser: Browser, demo: Demo, contexts: list[BrowserContext]
) -> None:
    """With WebSockets blocked: the snapshot over an event stream, the claim as a POST."""
    ann = signed_in(contexts, browser, demo.url, "ann", "red", BLOCK_WEBSOCKETS)
    bob = signed_in(contexts, browser, demo.url, "bob", "red", BLOCK_WEBSOCKETS)
    for page in (ann, bob):
        assert page.evaluate("live.transport") == "sse"
    add(ann, "Over event streams")
    card(bob, "Over event streams").locator("button.claim").click()
    expect(card(ann, "Over event streams").locator(".assignee")).to_have_text("bob", timeout=SOON)
    # A page opened now gets the board in its stream's first message (the snapshot).
    cy = signed_in(contexts, browser, demo.url, "cy", "red", BLOCK_WEBSOCKETS)
    expect(card(cy, "Over event streams").locator(".assignee")).to_have_text("bob")
    expect(cy.locator(".card")).to_have_count(1)
