"""Fixtures: one suite, two databases (SQLite always, PostgreSQL when reachable)."""

import os

import pytest
from sqlalchemy.engine import make_url

# Importing app.py builds its module-level app; give it a key so it does not
# write one into the checkout's instance/ folder.
os.environ.setdefault("SECRET_KEY", "test-only-secret-key")

from app import create_app  # noqa: E402
from demo_catalog import seed_demo_catalog  # noqa: E402
from helpers import (  # noqa: E402
    Browser,
    app_config,
    create_postgres_database,
    drop_postgres_database,
    empty_all_tables,
    migrate_to_head,
    unused_port,
)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory):
    return "sqlite:///" + str(tmp_path_factory.mktemp("sqlite") / "antidote.db")


@pytest.fixture(scope="session")
def postgresql_url():
    url = create_postgres_database()
    yield url.render_as_string(hide_password=False)
    drop_postgres_database(url)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request):
    """A migrated database of each kind; every test using it runs on both."""
    if request.param == "postgresql":
        request.applymarker(pytest.mark.postgres)
    url = request.getfixturevalue(f"{request.param}_url")
    migrate_to_head(url)
    return url


@pytest.fixture
def backend(database_url) -> str:
    """The name of the database kind the current test runs on."""
    return make_url(database_url).get_backend_name()


@pytest.fixture
def app(database_url):
    app = create_app(app_config(database_url))
    yield app
    empty_all_tables(app)


@pytest.fixture
def catalog(app):
    """Seed the demo catalog into the test database."""
    with app.app_context():
        seed_demo_catalog()
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def free_port() -> int:
    return unused_port()


@pytest.fixture
def browser(app):
    """One visitor's browser against the test app."""
    return Browser(app)


@pytest.fixture
def fake_credentials(monkeypatch):
    """AWS credentials boto3 accepts, for clients pointed at a fake or a Stubber;
    never a real profile."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
