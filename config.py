"""Settings read from the environment, in one place."""

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from limits import parse_many

from personalization.settings import SettingsError as ConfigError
from personalization.settings import checked, checked_weights, tunables

SECRET_KEY_FILE = "secret_key"
CONSENT_MODES = ("opt-out", "opt-in")


def env_bool(name: str, default: bool | None) -> bool | None:
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
    return checked(name, raw.strip(), kind, minimum, maximum)


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """Read a setting that must be one of a few words."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return value


def env_rate_limit(name: str, default: str) -> str:
    """Read a rate limit in the `limits` notation ("5 per hour;20 per day")."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(
            f'{name} must be limits like "120 per minute;1000 per day", not {raw!r}'
        ) from None
    return raw.strip()


def env_weights(name: str) -> dict[str, float]:
    """Read overrides of the interaction weight table, as a JSON object."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return {}
    try:
        weights = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a JSON object, not {raw!r}") from None
    return checked_weights(weights)


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
        "DATABASE_POOL_SIZE": env_number(
            "DATABASE_POOL_SIZE", 10, int, minimum=1, maximum=1000
        ),
        "SECRET_KEY": os.environ.get("SECRET_KEY")
        or load_or_create_secret_key(instance_path),
        "PERSONALIZATION_ENABLED": env_bool("PERSONALIZATION_ENABLED", True),
        # Empty means: derive it from SECRET_KEY (see fingerprint_key).
        "FINGERPRINT_SECRET": os.environ.get("FINGERPRINT_SECRET", ""),
        "TRUSTED_PROXY_COUNT": env_number("TRUSTED_PROXY_COUNT", 0, int, minimum=0),
        "CONSENT_MODE": env_choice("CONSENT_MODE", "opt-out", CONSENT_MODES),
        "VISITOR_COOKIE_DAYS": env_number("VISITOR_COOKIE_DAYS", 365, int, minimum=1),
        "TRACKER_DEBOUNCE_MS": env_number(
            "TRACKER_DEBOUNCE_MS", 1000, int, minimum=0, maximum=60000
        ),
        **rate_limit_settings(),
        **tunables_from_environment(),
        **personalize_settings(),
        # Where people write about their data (shown on the privacy pages).
        "PRIVACY_CONTACT_EMAIL": os.environ.get(
            "PRIVACY_CONTACT_EMAIL", "privacy@antidote.example"
        ),
        "AMPLITUDE_WEBHOOK_SECRET": os.environ.get("AMPLITUDE_WEBHOOK_SECRET", ""),
        "AMPLITUDE_WEBHOOK_SECRET_PREVIOUS": os.environ.get(
            "AMPLITUDE_WEBHOOK_SECRET_PREVIOUS", ""
        ),
        # Put the visitor id in a <meta> tag so the page's Amplitude SDK can send
        # it back; None: on exactly when the webhook is configured (create_app).
        "AMPLITUDE_EXPOSE_VISITOR_ID": env_bool("AMPLITUDE_EXPOSE_VISITOR_ID", None),
        "SESSION_COOKIE_SAMESITE": "Lax",
        # A CSRF token lives as long as the session: a tab left open for hours
        # keeps tracking (Flask-WTF's default, 1 h, silently stopped it).
        "WTF_CSRF_TIME_LIMIT": None,
        # A ceiling for every request body; endpoints set tighter limits of their own.
        "MAX_CONTENT_LENGTH": 2 * 1024 * 1024,
        "SESSION_COOKIE_SECURE": env_bool("SESSION_COOKIE_SECURE", False),
        # A Prometheus server's `Authorization: Bearer` token for /metrics; empty:
        # only a local address or a signed-in admin may read it.
        "METRICS_TOKEN": os.environ.get("METRICS_TOKEN", "").strip(),
        # How long an admin stays signed in to /admin.
        "ADMIN_SESSION_HOURS": env_number(
            "ADMIN_SESSION_HOURS", 12, int, minimum=1, maximum=24 * 30
        ),
        # Log each ranking decision (source, fallback reason, time) at DEBUG.
        "RANKING_DEBUG_LOG": env_bool("RANKING_DEBUG_LOG", False),
    }


def rate_limit_settings() -> dict:
    """The rate limits (rate_limits.py): how many, and where counts live.

    memory:// counts per worker process (with N workers the real limit is N times
    the setting), so production sets REDIS_URL. When Redis cannot be reached,
    limits fall back to each process's memory and say so in the log: tracking
    keeps working, never a 500, no event lost.
    """
    redis_url = os.environ.get("REDIS_URL", "")
    return {
        "REDIS_URL": redis_url,
        "RATELIMIT_STORAGE_URI": os.environ.get("RATELIMIT_STORAGE_URI")
        or redis_url
        or "memory://",
        # A dead Redis must cost a page nothing: refuse connections fast.
        "RATELIMIT_STORAGE_OPTIONS": {
            "socket_connect_timeout": 0.2,
            "socket_timeout": 0.2,
        }
        if (os.environ.get("RATELIMIT_STORAGE_URI") or redis_url).startswith("redis")
        else {},
        "TRACKING_RATE_LIMIT": env_rate_limit("TRACKING_RATE_LIMIT", "120 per minute"),
        # Consultation requests: people ask a few clinics, spammers thousands.
        "CONSULTATION_RATE_LIMIT": env_rate_limit(
            "CONSULTATION_RATE_LIMIT", "5 per hour;20 per day"
        ),
        # Per address, looser: an office or a carrier's NAT is many people.
        "CONSULTATION_RATE_LIMIT_PER_ADDRESS": env_rate_limit(
            "CONSULTATION_RATE_LIMIT_PER_ADDRESS", "30 per hour;100 per day"
        ),
        # Failed admin logins: per client address, and per username from anywhere
        # (guessing from many addresses is slowed too; successes do not count).
        "ADMIN_LOGIN_RATE_LIMIT_PER_ADDRESS": env_rate_limit(
            "ADMIN_LOGIN_RATE_LIMIT_PER_ADDRESS", "5 per minute;20 per hour"
        ),
        "ADMIN_LOGIN_RATE_LIMIT_PER_USERNAME": env_rate_limit(
            "ADMIN_LOGIN_RATE_LIMIT_PER_USERNAME", "10 per hour;50 per day"
        ),
        # Many people can share an address (an office, a carrier's NAT).
        "TRACKING_RATE_LIMIT_PER_ADDRESS": env_rate_limit(
            "TRACKING_RATE_LIMIT_PER_ADDRESS", "600 per minute"
        ),
    }


def tunables_from_environment() -> dict:
    """The engine's tunables; names, defaults, ranges: personalization/settings.py."""
    values = {
        spec.name.upper(): env_number(
            spec.name.upper(),
            spec.default,
            type(spec.default),
            spec.metadata["minimum"],
            spec.metadata["maximum"],
        )
        for spec in tunables()
    }
    values["INTERACTION_WEIGHTS"] = env_weights("INTERACTION_WEIGHTS")
    return values


def personalize_settings() -> dict:
    """AWS Personalize settings; all optional, the local engine needs none."""
    return {
        "AWS_PERSONALIZE_ENABLED": env_bool("AWS_PERSONALIZE_ENABLED", False),
        "AWS_PERSONALIZE_CAMPAIGN_ARN": os.environ.get(
            "AWS_PERSONALIZE_CAMPAIGN_ARN", ""
        ),
        "AWS_PERSONALIZE_SIMS_CAMPAIGN_ARN": os.environ.get(
            "AWS_PERSONALIZE_SIMS_CAMPAIGN_ARN", ""
        ),
        "AWS_PERSONALIZE_TRACKING_ID": os.environ.get(
            "AWS_PERSONALIZE_TRACKING_ID", ""
        ),
        # A user-personalization campaign: home sections ask it for their items
        # (GetRecommendations), through the filter that drops dismissed items.
        "AWS_PERSONALIZE_USER_CAMPAIGN_ARN": os.environ.get(
            "AWS_PERSONALIZE_USER_CAMPAIGN_ARN", ""
        ),
        "AWS_PERSONALIZE_DISMISSED_FILTER_ARN": os.environ.get(
            "AWS_PERSONALIZE_DISMISSED_FILTER_ARN", ""
        ),
        # Items and Users datasets kept current by `flask personalization
        # sync-catalog` (PutItems, PutUsers).
        "AWS_PERSONALIZE_ITEMS_DATASET_ARN": os.environ.get(
            "AWS_PERSONALIZE_ITEMS_DATASET_ARN", ""
        ),
        "AWS_PERSONALIZE_USERS_DATASET_ARN": os.environ.get(
            "AWS_PERSONALIZE_USERS_DATASET_ARN", ""
        ),
        # "Forget me" in Personalize: a data deletion job on the dataset group,
        # reading a CSV of user ids written to this bucket, with this role.
        "AWS_PERSONALIZE_DATASET_GROUP_ARN": os.environ.get(
            "AWS_PERSONALIZE_DATASET_GROUP_ARN", ""
        ),
        "AWS_PERSONALIZE_DELETION_BUCKET": os.environ.get(
            "AWS_PERSONALIZE_DELETION_BUCKET", ""
        ),
        "AWS_PERSONALIZE_DELETION_PREFIX": os.environ.get(
            "AWS_PERSONALIZE_DELETION_PREFIX", "personalize-deletions/"
        ),
        "AWS_PERSONALIZE_ROLE_ARN": os.environ.get("AWS_PERSONALIZE_ROLE_ARN", ""),
        "AWS_REGION": os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1",
        "AWS_PERSONALIZE_ENDPOINT_URL": os.environ.get(
            "AWS_PERSONALIZE_ENDPOINT_URL", ""
        ),
        "AWS_PERSONALIZE_CONNECT_TIMEOUT": env_number(
            "AWS_PERSONALIZE_CONNECT_TIMEOUT", 0.1, float, minimum=0.01, maximum=10
        ),
        "AWS_PERSONALIZE_READ_TIMEOUT": env_number(
            "AWS_PERSONALIZE_READ_TIMEOUT", 0.2, float, minimum=0.01, maximum=30
        ),
        # Most a page may wait on Personalize across all its calls; a call whose
        # worst case (connect + read timeout) no longer fits is not made.
        "AWS_PERSONALIZE_PAGE_BUDGET": env_number(
            "AWS_PERSONALIZE_PAGE_BUDGET", 0.5, float, minimum=0.0, maximum=30
        ),
        "AWS_PERSONALIZE_MAX_ATTEMPTS": env_number(
            "AWS_PERSONALIZE_MAX_ATTEMPTS", 2, int, minimum=1, maximum=5
        ),
        "AWS_PERSONALIZE_FAILURE_THRESHOLD": env_number(
            "AWS_PERSONALIZE_FAILURE_THRESHOLD", 3, int, minimum=1
        ),
        "AWS_PERSONALIZE_COOLDOWN_SECONDS": env_number(
            "AWS_PERSONALIZE_COOLDOWN_SECONDS", 30.0, float, minimum=0.0
        ),
        # Seconds between background deliveries of queued events; 0 turns the
        # background thread off (run `flask personalization sync-events` instead).
        "AWS_PERSONALIZE_SYNC_INTERVAL": env_number(
            "AWS_PERSONALIZE_SYNC_INTERVAL", 10.0, float, minimum=0.0
        ),
    }


def fingerprint_key(secret_key: str) -> str:
    """Derive the fingerprint key from SECRET_KEY, so one secret is enough.

    A derived key (not SECRET_KEY itself) keeps the two uses apart: knowing
    fingerprints tells nothing about the key that signs cookies.
    """
    return hmac.new(
        secret_key.encode(), b"antidote visitor fingerprint v1", hashlib.sha256
    ).hexdigest()
