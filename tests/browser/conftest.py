"""Browser tests: Debian's Chromium driven by Playwright against pytest-django's live server.

Never `playwright install`: the browser is the system package (`scripts/services.sh install`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.factories import PASSWORD

# Playwright's sync API runs an event loop in the test thread; the ORM calls the tests make
# between page actions are ordinary blocking calls, not coroutines.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The session's one browser is the `browser` fixture of tests/conftest.py: tests elsewhere
# (the try-it test of explanations) use it too, and a second Playwright in the same run
# refuses to start inside the first one's event loop.
SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts" / "screenshots"


@pytest.fixture(scope="session")
def screenshots_dir() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(
        base_url=live_server.url, accept_downloads=True, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors
    yield page
    context.close()


@pytest.fixture
def shot(screenshots_dir):
    """`shot(page, "dashboard")` saves test-artifacts/screenshots/dashboard.png (full page)."""

    def _shot(page, name: str) -> Path:
        path = screenshots_dir / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return _shot


def login(page, user) -> None:
    page.goto("/accounts/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def pytest_terminal_summary(terminalreporter):
    if SCREENSHOTS.exists() and any(SCREENSHOTS.glob("*.png")):
        terminalreporter.write_line(f"browser screenshots: {SCREENSHOTS}")
