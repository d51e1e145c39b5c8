"""Real-browser fixtures: the app served by gunicorn, driven by Debian's Chromium.

Screenshots go to ARTIFACTS_DIR (default: test-artifacts/ in the checkout), so CI
can keep them.
"""

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from browser_helpers import TRACK_PATH
from helpers import PROJECT, seeded_site, skip_or_fail

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", PROJECT / "test-artifacts"))


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium from the system; never a downloaded one."""
    if not shutil.which(CHROMIUM):
        skip_or_fail(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        skip_or_fail(f"Playwright for Python is not installed: {error}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


class LiveSite:
    """The seeded site served on a free port, with its SQLite database at hand."""

    def __init__(self, base_url: str, database: Path):
        self.base_url = base_url
        self.database = database

    def url(self, path: str) -> str:
        return self.base_url + path

    def query(self, sql: str, *params):
        with sqlite3.connect(self.database) as connection:
            return connection.execute(sql, params).fetchall()

    def clear_history(self):
        with sqlite3.connect(self.database) as connection:
            connection.execute("DELETE FROM pending_interactions")
            connection.execute("DELETE FROM user_interactions")
            connection.execute("DELETE FROM user_category_affinity")
            connection.execute("DELETE FROM item_popularity")
            connection.execute("DELETE FROM procedure_covisitation")
            connection.execute("DELETE FROM recommendation_impressions")


def start_live_site(tmp_path_factory, name: str, **settings: str):
    database = tmp_path_factory.mktemp(name) / "site.db"
    # Popularity is cached per worker; off, every page sees what the test wrote.
    settings.setdefault("POPULARITY_CACHE_SECONDS", "0")
    # Each page stores its own view and lists before answering: held ones
    # (page_buffer.py) could land after the next test emptied the tables.
    # Holding under gunicorn is tested in tests/test_page_buffer.py.
    settings.setdefault("PAGE_BUFFER_ROWS", "0")
    site = seeded_site(f"sqlite:///{database}", TRACKER_DEBOUNCE_MS="1000", **settings)
    return site, database


@pytest.fixture(scope="session")
def live_site(tmp_path_factory):
    site, database = start_live_site(tmp_path_factory, "live")
    with site as server:
        yield LiveSite(server.url, database)


@pytest.fixture(scope="session")
def live_opt_in_site(tmp_path_factory):
    site, database = start_live_site(tmp_path_factory, "opt-in", CONSENT_MODE="opt-in")
    with site as server:
        yield LiveSite(server.url, database)


@pytest.fixture
def site(live_site):
    live_site.clear_history()
    return live_site


@pytest.fixture
def opt_in_site(live_opt_in_site):
    live_opt_in_site.clear_history()
    return live_opt_in_site


@pytest.fixture
def page(chromium):
    context = chromium.new_context()
    page = context.new_page()
    yield page
    leave_and_let_the_tracker_finish(page)
    context.close()


def leave_and_let_the_tracker_finish(page) -> None:
    """A tracked page sends what it queued, and its engaged time, as it goes:
    let that request land now, not in the next test's freshly emptied database."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    tracked = page.url.startswith("http") and page.locator("script[data-endpoint]")
    if not tracked or not tracked.count():
        return
    try:
        with page.expect_request_finished(
            lambda request: TRACK_PATH in request.url, timeout=2000
        ):
            page.goto("about:blank")
    except PlaywrightTimeoutError:
        pass  # it had nothing to send (under a second on the page, say)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
