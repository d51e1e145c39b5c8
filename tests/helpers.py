"""Test helpers: throwaway databases, app configuration, a browser-like client."""

import http.client
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import closing, contextmanager
from pathlib import Path

import psycopg2
import pytest
import requests
from sqlalchemy.engine import make_url

from app import create_app
from models import db

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
IN_CI = os.environ.get("CI", "").lower() == "true"


def postgres_server_url():
    """Return the PostgreSQL server to test against, as a SQLAlchemy URL."""
    return make_url(os.environ.get("TEST_DATABASE_URL") or DEFAULT_POSTGRES_URL)


def skip_or_fail(reason: str):
    """Skip on a laptop without the service; fail under CI, where it must run."""
    if IN_CI:
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


def admin_connection(url):
    """Open an autocommit psycopg2 connection to the server's maintenance database."""
    connection = psycopg2.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname=url.database or "postgres",
        connect_timeout=3,
    )
    connection.autocommit = True
    return connection


def create_postgres_database(prefix: str = "antidote_test"):
    """Create a uniquely named throwaway database; return its URL."""
    server = postgres_server_url()
    try:
        connection = admin_connection(server)
    except psycopg2.OperationalError as error:
        skip_or_fail(
            f"PostgreSQL not reachable at {server.host}:{server.port}: {error}"
        )
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    with closing(connection), connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    return server.set(drivername="postgresql+psycopg2", database=name)


def drop_postgres_database(url) -> None:
    """Drop a throwaway database, disconnecting anyone still using it."""
    with closing(admin_connection(postgres_server_url())) as connection:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')


def app_config(database_url: str, **overrides) -> dict:
    """Configuration for a test app on the given database."""
    config = {
        "TESTING": True,
        "SECRET_KEY": "test-only-secret-key",
        "SQLALCHEMY_DATABASE_URI": database_url,
        # Everyone sees personalized pages unless a test puts them in the holdout
        # (a random 10% would make page tests flaky).
        "EXPERIMENT_CONTROL_SHARE": 0.0,
        # No background aggregator in the test process, even with TESTING off:
        # it would drain rows other tests expect to wait (see deferred() in
        # test_aggregation.py). Live servers under test run their own.
        "AGGREGATION_INTERVAL_SECONDS": 0,
    }
    config.update(overrides)
    return config


def migrate_to_head(database_url: str) -> None:
    """Build the schema with the project's own migrations."""
    from flask_migrate import upgrade

    app = create_app(app_config(database_url))
    with app.app_context():
        upgrade()
        db.engine.dispose()


def empty_all_tables(app) -> None:
    """Delete every row, children first, so the next test starts clean."""
    with app.app_context():
        db.session.remove()
        with db.engine.begin() as connection:
            for table in reversed(db.metadata.sorted_tables):
                connection.execute(table.delete())
        db.engine.dispose()


CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


class Browser:
    """A test client that behaves like one browser: its own address and cookies,
    and the CSRF token its pages carry, sent the way the tracker sends it."""

    def __init__(self, app, address="203.0.113.7", headers=None):
        self.app = app
        self.client = app.test_client()
        self.address = address
        self.headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"}
        self.headers.update(headers or {})
        self._token = None

    def get(self, path, **kwargs):
        return self.client.get(
            path,
            headers={**self.headers, **kwargs.pop("headers", {})},
            environ_base={"REMOTE_ADDR": self.address},
            **kwargs,
        )

    def post(self, path, **kwargs):
        headers = {**self.headers, "X-CSRFToken": self.csrf_token()}
        headers.update(kwargs.pop("headers", {}))
        return self.client.post(
            path, headers=headers, environ_base={"REMOTE_ADDR": self.address}, **kwargs
        )

    def csrf_token(self) -> str:
        if self._token is None:
            html = self.get("/privacy").get_data(as_text=True)
            self._token = CSRF_META.search(html).group(1)
        return self._token

    def track(self, *events, **kwargs):
        body = {"events": list(events)} if len(events) != 1 else events[0]
        return self.post("/personalization/track-interaction", json=body, **kwargs)

    def cookie(self, name):
        cookie = self.client.get_cookie(name)
        return cookie.value if cookie else None

    def new_tab(self, app=None) -> "Browser":
        """Another client of the same browser: its cookies (and so its visitor and
        CSRF token), at the same address; `app` stands for another worker."""
        tab = Browser(app or self.app, self.address, self.headers)
        for name in ("antidote_visitor", "session", "antidote_tracking"):
            if self.cookie(name) is not None:
                tab.client.set_cookie(name, self.cookie(name))
        tab._token = self._token
        return tab


class WebVisitor:
    """One browser over real HTTP: cookies, and the CSRF token of its first page."""

    def __init__(self, base_url: str, agent: str = "Mozilla/5.0 (X11; Linux) Test/1.0"):
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers["User-Agent"] = agent
        page = self.session.get(base_url + "/privacy", timeout=30)
        self.token = CSRF_META.search(page.text).group(1)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(self.base_url + path, timeout=30, **kwargs)

    def track(self, *events) -> requests.Response:
        return self.session.post(
            self.base_url + "/personalization/track-interaction",
            json={"events": list(events)},
            headers={"X-CSRFToken": self.token},
            timeout=30,
        )


def stored_interactions(app) -> list:
    """Every interaction row, oldest first, as plain tuples."""
    from sqlalchemy import select

    from models import UserInteraction

    with app.app_context():
        return db.session.execute(
            select(
                UserInteraction.user_id,
                UserInteraction.interaction_type,
                UserInteraction.target_type,
                UserInteraction.target_id,
            ).order_by(UserInteraction.id)
        ).all()


def count_stored(where: str) -> str:
    """SQL counting the interactions that match `where` wherever a server
    stored them: in the log, or still in the aggregator's inbox (a server
    stopped right after answering may not have moved them yet)."""
    return (
        f"SELECT (SELECT count(*) FROM user_interactions WHERE {where})"
        f" + (SELECT count(*) FROM pending_interactions WHERE {where})"
    )


def catalog_id(app, model, slug: str) -> int:
    """The id of a catalog item by slug."""
    from sqlalchemy import select

    with app.app_context():
        return db.session.scalar(select(model.id).where(model.slug == slug))


def wait_until_up(url: str, server, seconds: float = 20) -> None:
    """Wait until `url` answers; fail with the server's output if it died."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited: {server.output()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        # Not up yet: refused, reset, an error page, or slow to answer on a busy
        # machine (TimeoutError, which URLError does not cover).
        except (OSError, http.client.HTTPException):
            time.sleep(0.2)
    raise AssertionError(f"server did not answer on {url}: {server.output()}")


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


PROJECT = Path(__file__).resolve().parent.parent


def flask_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    """Run a `flask` command of the project, as a newcomer would."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def unused_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server process started by a test, with its output kept in a file."""

    def __init__(self, process: subprocess.Popen, log_path: Path, url: str = ""):
        self.process = process
        self.log_path = log_path
        self.url = url

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_server(command: list[str], env: dict, health_url: str):
    """Start a server process, wait until it answers, stop it afterwards.

    Output goes to a file, not a pipe: a busy server must never block on a full
    pipe nobody reads.
    """
    log_path = Path(tempfile.mkstemp(prefix="antidote-server-", suffix=".log")[1])
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(process, log_path, health_url.rsplit("/", 1)[0])
    try:
        wait_until_up(health_url, server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def seeded_site(database_url: str, workers: int = 2, **settings: str):
    """The real site under gunicorn on a free port: migrated, seeded, serving.

    `settings` are environment variables (CONSENT_MODE="opt-in", ...). Yields the
    Server; its `url` is the base URL.
    """
    # Nobody in the holdout unless a test asks: page tests expect personal lists.
    settings.setdefault("EXPERIMENT_CONTROL_SHARE", "0")
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        SECRET_KEY="live-site-test-key",
        **settings,
    )
    flask_cli(env, "db", "upgrade")
    # The catalog only: tests count what they did themselves.
    flask_cli(env, "seed-demo", "--if-empty", "--no-traffic")
    port = unused_port()
    base_url = f"http://127.0.0.1:{port}"
    with running_server(
        gunicorn_command(port, workers), env, base_url + "/healthz"
    ) as server:
        yield server


def gunicorn_command(port: int, workers: int | None = 2) -> list[str]:
    """The production server command, as `make serve` runs it (gunicorn reads
    gunicorn.conf.py from the project folder), on a test port. `workers` None:
    the configuration's own count, one per core."""
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"]
    if workers:
        command += ["--workers", str(workers)]
    return [*command, "app:app"]


def shared_data(*parts: str):
    """A file of the shared datasets: SHARED_DATA_DIR, else ../shared/data beside
    the checkout. Missing (a clone elsewhere): skip, saying where it looked."""
    from pathlib import Path

    root = os.environ.get("SHARED_DATA_DIR")
    base = (
        Path(root) if root else Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    path = base.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared dataset not found: {path} (set SHARED_DATA_DIR)")
    return path


RANKING_CAMPAIGN = "arn:aws:personalize:us-east-1:123456789012:campaign/ranking"


def personalize_app(database_url, **overrides):
    """A test app with AWS Personalize on: a ranking campaign and a tracking id
    (the background event sync off); `overrides` adds or replaces settings."""
    config = {
        "AWS_PERSONALIZE_ENABLED": True,
        "AWS_PERSONALIZE_CAMPAIGN_ARN": RANKING_CAMPAIGN,
        "AWS_PERSONALIZE_TRACKING_ID": "tracking-1",
        "AWS_PERSONALIZE_SYNC_INTERVAL": 0,
        **overrides,
    }
    return create_app(app_config(database_url, **config))
