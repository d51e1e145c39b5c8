"""Configuration from the environment: defaults, parsing, the generated secret key."""

import stat
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from config import (
    ConfigError,
    env_bool,
    env_number,
    load_or_create_secret_key,
    normalize_database_url,
    settings_from_environment,
)
from personalization.settings import Settings

SETTINGS = [
    "DATABASE_URL",
    "SECRET_KEY",
    "PERSONALIZATION_ENABLED",
    "INTERACTION_RETENTION_DAYS",
    "AFFINITY_DECAY_RATE",
]


@pytest.fixture
def clean_env(monkeypatch):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults(clean_env, tmp_path):
    settings = settings_from_environment(str(tmp_path))
    assert settings["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path}/antidote.db"
    assert settings["PERSONALIZATION_ENABLED"] is True
    assert settings["INTERACTION_RETENTION_DAYS"] == 90
    assert settings["AFFINITY_DECAY_RATE"] == 0.95


def test_values_from_environment(clean_env, tmp_path):
    clean_env.setenv("DATABASE_URL", "postgres://u:p@db.example:5432/antidote")
    clean_env.setenv("SECRET_KEY", "from-the-environment")
    clean_env.setenv("PERSONALIZATION_ENABLED", "false")
    clean_env.setenv("INTERACTION_RETENTION_DAYS", "30")
    clean_env.setenv("AFFINITY_DECAY_RATE", "0.9")
    settings = settings_from_environment(str(tmp_path))
    assert (
        settings["SQLALCHEMY_DATABASE_URI"]
        == "postgresql+psycopg2://u:p@db.example:5432/antidote"
    )
    assert settings["SECRET_KEY"] == "from-the-environment"
    assert settings["PERSONALIZATION_ENABLED"] is False
    assert settings["INTERACTION_RETENTION_DAYS"] == 30
    assert settings["AFFINITY_DECAY_RATE"] == 0.9
    assert not (tmp_path / "secret_key").exists()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://a@h/db", "postgresql+psycopg2://a@h/db"),
        ("postgresql://a@h/db", "postgresql+psycopg2://a@h/db"),
        ("postgresql+psycopg2://a@h/db", "postgresql+psycopg2://a@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_postgres_scheme_is_accepted(url, expected):
    assert normalize_database_url(url) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("TRUE", True), ("yes", True), ("off", False), ("0", False)],
)
def test_env_bool_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("FLAG", raw)
    assert env_bool("FLAG", not expected) is expected


def test_bad_values_are_rejected_with_the_setting_named(monkeypatch):
    monkeypatch.setenv("FLAG", "maybe")
    with pytest.raises(ConfigError, match="FLAG must be true or false"):
        env_bool("FLAG", True)
    monkeypatch.setenv("DAYS", "ninety")
    with pytest.raises(ConfigError, match="DAYS must be a int"):
        env_number("DAYS", 90, int)
    monkeypatch.setenv("RATE", "1.5")
    with pytest.raises(ConfigError, match="RATE must be between"):
        env_number("RATE", 0.95, float, minimum=0.0, maximum=1.0)


@pytest.mark.parametrize(
    "setting",
    ["TRACKING_RATE_LIMIT", "CONSULTATION_RATE_LIMIT_PER_ADDRESS"],
)
def test_a_malformed_rate_limit_stops_start_up_naming_it(clean_env, tmp_path, setting):
    """Not a 500 on the first limited request: the setting is read at start."""
    clean_env.setenv(setting, "120 a minute")
    with pytest.raises(ConfigError, match=f"{setting} must be limits like"):
        settings_from_environment(str(tmp_path))
    clean_env.setenv(setting, " 5 per minute;20 per hour ")
    assert (
        settings_from_environment(str(tmp_path))[setting] == "5 per minute;20 per hour"
    )


def test_secret_key_is_generated_once_and_kept(tmp_path):
    first = load_or_create_secret_key(str(tmp_path))
    second = load_or_create_secret_key(str(tmp_path))
    assert first == second
    assert len(first) == 64
    key_file = tmp_path / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    other = tmp_path / "elsewhere"
    assert load_or_create_secret_key(str(other)) != first


def test_app_without_secret_key_uses_the_kept_one(clean_env, tmp_path, monkeypatch):
    from flask import Flask

    from app import create_app

    monkeypatch.setattr(
        Flask, "auto_find_instance_path", lambda self: str(tmp_path / "instance")
    )
    first = create_app()
    second = create_app()
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]
    assert (
        first.config["SECRET_KEY"] == (tmp_path / "instance" / "secret_key").read_text()
    )


# The engine's tunables (personalization/settings.py)


def test_every_tunable_is_read_from_the_environment(clean_env, tmp_path):
    clean_env.setenv("HISTORY_ROWS", "250")
    clean_env.setenv("SEED_RECENCY_DECAY", "0.5")
    settings = Settings.from_config(settings_from_environment(str(tmp_path)))
    assert settings.history_rows == 250 and settings.seed_recency_decay == 0.5
    assert settings.covisitation_weight == 0.4  # untouched: the default
    clean_env.setenv("TOP_CATEGORIES", "0")
    with pytest.raises(ConfigError, match="TOP_CATEGORIES must be between 1 and 100"):
        settings_from_environment(str(tmp_path))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"HISTORY_WEIGHT": 11}, "HISTORY_WEIGHT must be between 0.0 and 10.0, not 11"),
        ({"HISTORY_ROWS": 2.5}, "HISTORY_ROWS must be a whole number"),
        ({"POPULARITY_WINDOW_DAYS": 0}, "POPULARITY_WINDOW_DAYS must be at least 1"),
        ({"AFFINITY_DECAY_RATE": "fast"}, "AFFINITY_DECAY_RATE must be a float"),
        ({"AFFINITY_DECAY_RATE": True}, "AFFINITY_DECAY_RATE must be a float"),
        ({"INTERACTION_WEIGHTS": {"click": 3}}, r"INTERACTION_WEIGHTS\['click'\]"),
        ({"INTERACTION_WEIGHTS": ["click"]}, "INTERACTION_WEIGHTS must map"),
    ],
)
def test_a_bad_tunable_stops_start_up_naming_it(override, message):
    """Values given to create_app (not only the environment) are checked once, at
    start-up, with the setting named."""
    from app import create_app

    config = {"TESTING": True, "SECRET_KEY": "k", **override}
    with pytest.raises(ConfigError, match=message):
        create_app(config)


def test_weight_overrides_merge_onto_the_table():
    settings = Settings.from_config({"INTERACTION_WEIGHTS": {"click": 0.4, "x": -1}})
    assert settings.weight("click") == 0.4 and settings.weight("x") == -1.0
    assert settings.weight("view") == 0.1 and settings.weight("unknown") == 0.0
    assert Settings.from_config({}) == Settings()


def test_every_tunable_is_documented():
    """README's configuration table and .env.example name every tunable."""
    from helpers import PROJECT
    from personalization.settings import tunables

    readme = (PROJECT / "README.md").read_text()
    example = (PROJECT / ".env.example").read_text()
    for spec in tunables():
        key = spec.name.upper()
        assert f"`{key}`" in readme, key
        assert f"# {key}=" in example, key


def test_postgresql_pool_keeps_the_configured_connections_open(clean_env, tmp_path):
    """A gevent worker's concurrent requests each hold a connection: the pool
    keeps DATABASE_POOL_SIZE open instead of reconnecting above SQLAlchemy's 5."""
    from app import create_app
    from models import db

    clean_env.delenv("DATABASE_POOL_SIZE", raising=False)
    clean_env.setenv("DATABASE_URL", "postgresql://u@127.0.0.1:1/never-connected")
    clean_env.setenv("SECRET_KEY", "test")
    for size, expected in ((None, 10), ("25", 25)):
        if size:
            clean_env.setenv("DATABASE_POOL_SIZE", size)
        app = create_app({"AGGREGATION_INTERVAL_SECONDS": 0})
        with app.app_context():
            assert db.engine.pool.size() == expected
            assert db.engine.pool._max_overflow == 10
    clean_env.setenv("DATABASE_POOL_SIZE", "0")
    with pytest.raises(ConfigError, match="DATABASE_POOL_SIZE"):
        settings_from_environment(str(tmp_path))


@pytest.mark.postgres
def test_an_idle_connection_the_server_closed_is_replaced_unseen(postgresql_url):
    """A pooled connection is pinged before use only after sitting idle: one the
    server closed meanwhile (a restart, an idle timeout) is replaced and the
    query succeeds; one in steady use costs no extra round trip."""
    from app import ping_idle_connections

    engine = create_engine(postgresql_url, pool_size=1, max_overflow=0)
    ping_idle_connections(engine, idle_seconds=0.3)
    pings = []
    real_ping = engine.dialect.do_ping
    engine.dialect.do_ping = lambda connection: pings.append(1) or real_ping(connection)
    backend_pid = text("SELECT pg_backend_pid()")
    try:
        with engine.connect() as connection:
            first = connection.scalar(backend_pid)
        for _ in range(5):  # in steady use: the same connection, never pinged
            with engine.connect() as connection:
                assert connection.scalar(backend_pid) == first
        assert pings == []

        with create_engine(postgresql_url, poolclass=NullPool).connect() as admin:
            admin.execute(text(f"SELECT pg_terminate_backend({first})"))
        time.sleep(0.4)
        with engine.connect() as connection:
            replaced = connection.scalar(backend_pid)
        assert replaced != first
        assert pings == [1]
    finally:
        engine.dispose()


def test_create_app_pings_idle_postgresql_connections_only(clean_env):
    """PostgreSQL pools get the idle check instead of a ping per checkout; SQLite
    has no server to lose."""
    from app import create_app
    from models import db

    clean_env.setenv("SECRET_KEY", "test")
    for url, pinged_when_idle in (
        ("postgresql://u@127.0.0.1:1/never-connected", True),
        ("sqlite://", False),
    ):
        app = create_app({"SQLALCHEMY_DATABASE_URI": url})
        with app.app_context():
            assert bool(db.engine.pool.dispatch.checkout) is pinged_when_idle
            assert not db.engine.pool._pre_ping
