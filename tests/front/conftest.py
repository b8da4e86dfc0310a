"""Fixtures of the browser tests: Debian's Chromium driven by Playwright for Python, against a
real Central (a process, its API on 127.0.0.1) with real Engine and Monitor processes on the real
broker and MySQL.

Fixtures
    browser   Chromium (/usr/bin/chromium, never a downloaded one), one per module. Missing
              Chromium or Playwright skips the tests, or fails them when $EV_REQUIRE_SERVICES=1
              (CI: .ci/run installs chromium).
    front     a FrontSystem (tests/front/frontsys.py): Central started with its API and both
              tokens, drivers D001 and D002 registered; CPs and drivers started by the test.
    open_page open_page(viewport=DESKTOP) -> Browsing: a new browser context on Central's page,
              with every request it made, console errors and main-frame navigations recorded
              (``open_browsing(browser, front)`` does the same for a system the test builds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from tests.support.services import ENV_REQUIRE_SERVICES, services_required

from .frontsys import DESKTOP, FrontSystem, chromium_problem, launch_chromium

@pytest.fixture(scope="module")
def browser():
    problem = chromium_problem()
    if problem:
        message = f"the browser tests cannot run: {problem}"
        if services_required():
            pytest.fail(f"{message} (${ENV_REQUIRE_SERVICES}=1 makes this a failure)", pytrace=False)
        pytest.skip(f"{message} (set ${ENV_REQUIRE_SERVICES}=1 to fail instead of skipping)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def front(runner, kafka_bootstrap, kafka_topic_prefix, fresh_mysql_url) -> Iterator[FrontSystem]:
    system = FrontSystem(runner, kafka_bootstrap, fresh_mysql_url, kafka_topic_prefix)
    system.start_central()
    yield system
    system.close()  # before the database is dropped


@dataclass
class Browsing:
    """One browser context on the page, and what it did."""

    context: object
    page: object
    origin: str
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    navigations: list[str] = field(default_factory=list)

    def tile(self, cp_id: str):
        return self.page.locator(f'article.tile[data-cp-id="{cp_id}"]')

    def mark(self) -> None:
        """A value in the page's window: still there later means the page was never reloaded."""
        self.page.evaluate("window.__evFrontKept = 'not reloaded'")

    def assert_not_reloaded(self) -> None:
        assert self.page.evaluate("window.__evFrontKept") == "not reloaded", "the page was reloaded"
        assert len(self.navigations) == 1, f"the page navigated: {self.navigations}"

    def assert_local(self) -> None:
        """Every request the page made went to the machine it was served from."""
        assert self.requests, "no request recorded"
        elsewhere = [url for url in self.requests if not _same_origin(url, self.origin)]
        assert not elsewhere, f"requests left {self.origin}: {elsewhere}"

    def assert_no_page_errors(self) -> None:
        """No uncaught error and nothing the Content-Security-Policy refused (a failed request
        such as a 401 is logged by the browser too, and is not counted)."""
        bad = [text for text in self.console_errors
               if text.startswith("uncaught:") or "Content Security Policy" in text or "Refused to" in text]
        assert not bad, bad

    def enter_token(self, token: str) -> None:
        self.page.get_by_label("Operator token").fill(token)
        self.page.get_by_role("button", name="Use token").click()


def _same_origin(url: str, origin: str) -> bool:
    if url.startswith("data:"):
        return True
    parts, home = urlsplit(url), urlsplit(origin)
    return (parts.scheme, parts.hostname, parts.port) == (home.scheme, home.hostname, home.port)


def open_browsing(browser, front: FrontSystem, viewport: dict | None = None, **options) -> Browsing:
    """A new browser context on ``front``'s page, once its live stream is open."""
    context = browser.new_context(viewport=viewport or DESKTOP, **options)
    page = context.new_page()
    browsing = Browsing(context, page, front.url)
    page.on("request", lambda request: browsing.requests.append(request.url))
    page.on("console", lambda message: browsing.console_errors.append(message.text)
            if message.type == "error" else None)
    page.on("pageerror", lambda error: browsing.console_errors.append(f"uncaught: {error}"))
    page.on("framenavigated", lambda frame: browsing.navigations.append(frame.url)
            if frame == page.main_frame else None)
    page.goto(front.url)
    page.locator("body[data-connection='live']").wait_for(timeout=10_000)
    return browsing


@pytest.fixture
def open_page(browser, front) -> Iterator[Callable[..., Browsing]]:
    opened: list[Browsing] = []

    def open_(viewport: dict | None = None, **options) -> Browsing:
        browsing = open_browsing(browser, front, viewport, **options)
        opened.append(browsing)
        return browsing

    yield open_
    for browsing in opened:
        browsing.context.close()
