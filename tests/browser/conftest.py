"""Real-browser fixtures: the app served by gunicorn, driven by Debian's Chromium."""

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import gunicorn_command, skip_or_fail, wait_until_up

PROJECT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


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

    def query(self, sql: str, *params):
        with sqlite3.connect(self.database) as connection:
            return connection.execute(sql, params).fetchall()

    def clear_history(self):
        with sqlite3.connect(self.database) as connection:
            connection.execute("DELETE FROM user_interactions")
            connection.execute("DELETE FROM user_category_affinity")


@pytest.fixture(scope="session")
def live_site(tmp_path_factory):
    from socket import socket

    with socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    database = tmp_path_factory.mktemp("live") / "site.db"
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{database}",
        SECRET_KEY="browser-test-key",
        TRACKER_DEBOUNCE_MS="1000",
    )
    flask = [sys.executable, "-m", "flask", "--app", "app"]
    for args in (["db", "upgrade"], ["seed-demo"]):
        subprocess.run(
            flask + args, cwd=PROJECT, env=env, check=True, capture_output=True
        )
    server = subprocess.Popen(
        gunicorn_command(port),
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base_url + "/healthz", server)
        yield LiveSite(base_url, database)
    finally:
        server.terminate()
        server.wait(timeout=10)
        server.stdout.close()


@pytest.fixture
def site(live_site):
    live_site.clear_history()
    return live_site


@pytest.fixture
def page(chromium):
    context = chromium.new_context()
    page = context.new_page()
    yield page
    context.close()
