"""Settings read from the environment, in one place."""

import os
import secrets
from pathlib import Path

SECRET_KEY_FILE = "secret_key"


class ConfigError(ValueError):
    """A setting in the environment has a value the site cannot use."""


def env_bool(name: str, default: bool) -> bool:
    """Read a true/false setting; accept the usual spellings, reject anything else."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def env_number(name: str, default, kind=float, minimum=None, maximum=None):
    """Read a numeric setting of the given kind, checked against its range."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a {kind.__name__}, not {raw!r}") from None
    if (minimum is not None and value < minimum) or (
        maximum is not None and value > maximum
    ):
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, not {raw}")
    return value


def normalize_database_url(url: str) -> str:
    """Point PostgreSQL URLs at psycopg2, the driver the project ships.

    Heroku-style `postgres://` is no longer accepted by SQLAlchemy, and since
    SQLAlchemy 2.1 a bare `postgresql://` means psycopg 3, which is not installed.
    """
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url[len(scheme) :]
    return url


def load_or_create_secret_key(instance_path: str) -> str:
    """Return the key kept in the instance folder, creating it on first use.

    A random key kept on disk survives restarts (sessions and signed cookies stay
    valid) without anyone having to invent one, and is never a guessable string.
    """
    path = Path(instance_path) / SECRET_KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    # O_EXCL: when two workers start at once, exactly one writes the key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def settings_from_environment(instance_path: str) -> dict:
    """Build the app's configuration from environment variables."""
    default_database = "sqlite:///" + str(Path(instance_path) / "antidote.db")
    return {
        "SQLALCHEMY_DATABASE_URI": normalize_database_url(
            os.environ.get("DATABASE_URL") or default_database
        ),
        "SECRET_KEY": os.environ.get("SECRET_KEY")
        or load_or_create_secret_key(instance_path),
        "PERSONALIZATION_ENABLED": env_bool("PERSONALIZATION_ENABLED", True),
        "INTERACTION_RETENTION_DAYS": env_number(
            "INTERACTION_RETENTION_DAYS", 90, int, minimum=1
        ),
        "AFFINITY_DECAY_RATE": env_number(
            "AFFINITY_DECAY_RATE", 0.95, float, minimum=0.0, maximum=1.0
        ),
        "POPULARITY_WINDOW_DAYS": env_number(
            "POPULARITY_WINDOW_DAYS", 30, int, minimum=1
        ),
    }
