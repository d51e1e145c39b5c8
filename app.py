"""Application factory: configuration, extensions, blueprints, commands, errors."""

import logging
import sys
import time

from flask import Flask, abort, render_template, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from werkzeug.exceptions import Forbidden, HTTPException, InternalServerError
from werkzeug.middleware.proxy_fix import ProxyFix

import personalization_system
import pictures
from config import fingerprint_key, normalize_database_url, settings_from_environment
from extensions import csrf, migrate
from models import db
from rate_limits import init_rate_limits

log = logging.getLogger(__name__)

# Paths whose clients are programs: their errors are JSON, never an HTML page.
JSON_PATH_PREFIXES = (
    "/personalization/",
    "/api/",
    "/webhooks/",
    "/healthz",
    "/metrics",
)
# Seconds a client should wait before retrying while the database is down.
RETRY_AFTER_SECONDS = 30
# Longest query string served; gunicorn's request-line limit is about the same.
MAX_QUERY_STRING_BYTES = 4096
# A pooled PostgreSQL connection left idle this long is pinged before use (see
# ping_idle_connections).
PING_AFTER_IDLE_SECONDS = 1.0


def create_app(config: dict | None = None) -> Flask:
    """Create and configure the Antidote app; `config` overrides the environment."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(settings_from_environment(app.instance_path))
    if config:
        app.config.update(config)
    app.config["SQLALCHEMY_DATABASE_URI"] = normalize_database_url(
        app.config["SQLALCHEMY_DATABASE_URI"]
    )
    app.config.setdefault(
        "SQLALCHEMY_ENGINE_OPTIONS",
        engine_options(
            app.config["SQLALCHEMY_DATABASE_URI"], app.config["DATABASE_POOL_SIZE"]
        ),
    )
    if app.config["AMPLITUDE_EXPOSE_VISITOR_ID"] is None:
        app.config["AMPLITUDE_EXPOSE_VISITOR_ID"] = bool(
            app.config["AMPLITUDE_WEBHOOK_SECRET"]
        )
    if not app.config.get("FINGERPRINT_SECRET"):
        app.config["FINGERPRINT_SECRET"] = fingerprint_key(app.config["SECRET_KEY"])
    configure_logging(app)
    trust_proxies(app)

    db.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            ping_idle_connections(db.engine)
    migrate.init_app(app, db, directory=str(app.root_path) + "/migrations")
    csrf.init_app(app)
    init_rate_limits(app)

    personalization_system.init_app(app)

    from admin import admin
    from routes import web
    from webhooks import webhooks

    app.register_blueprint(web)
    app.register_blueprint(admin)
    # Amplitude cannot send a CSRF token; the webhook checks its own secret.
    csrf.exempt(webhooks)
    app.register_blueprint(webhooks)

    import metrics

    metrics.init_app(app)

    from commands import register_commands

    register_commands(app)
    register_error_handlers(app)
    register_template_helpers(app)
    pictures.init_app(app)

    from visitor import current_visitor, set_visitor_cookie

    @app.context_processor
    def privacy_context() -> dict:
        visitor = current_visitor()
        expose = app.config["AMPLITUDE_EXPOSE_VISITOR_ID"] and visitor.tracked
        return {
            "visitor": visitor,
            "consent_mode": app.config["CONSENT_MODE"],
            "tracker_debounce_ms": app.config["TRACKER_DEBOUNCE_MS"],
            # The signed alias the page's Amplitude SDK sends back (see amplitude.py).
            "amplitude_alias": personalization_system.current_system().amplitude_alias(
                visitor.id
            )
            if expose
            else None,
        }

    app.before_request(refuse_malformed_urls)
    app.after_request(set_visitor_cookie)
    app.after_request(set_security_headers)
    app.after_request(keep_out_of_shared_caches)
    app.session_interface = SessionInterface()
    return app


def trust_proxies(app: Flask) -> None:
    """Take the client address from X-Forwarded-For only behind trusted proxies.

    Without proxies in front, the header is whatever the visitor chose to send, and
    honouring it would let anyone pick their own identity.
    """
    count = app.config["TRUSTED_PROXY_COUNT"]
    if count > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count)


def engine_options(database_url: str, pool_size: int) -> dict:
    """Pick connection-pool options that suit the database in use.

    On PostgreSQL, `pool_size` connections stay open; up to 10 more open when
    that many requests use the database at once, and close again when done. A
    gevent worker serves many requests at once, each holding a connection while
    it waits on the server: with SQLAlchemy's default of 5, tracking load opened
    and closed a connection (a new server process) every few requests. (SQLite
    calls never yield to another request: one connection at a time per worker.)
    """
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return {}
    return {
        "connect_args": {"connect_timeout": 5},
        "pool_size": pool_size,
        "max_overflow": 10,
    }


def ping_idle_connections(
    engine: Engine, idle_seconds: float = PING_AFTER_IDLE_SECONDS
) -> None:
    """Check a pooled connection with a round trip before use when it sat idle
    for `idle_seconds` or more: a database restart, or a server's or a
    firewall's idle timeout, may have closed it meanwhile. A closed one is
    replaced by a new connection, so the site recovers by itself after an
    outage.

    SQLAlchemy's pool_pre_ping checks every checkout: under load, a round trip
    per request for a connection used a few milliseconds before (6% of a
    tracking worker's time, and the server's share). A connection in such
    steady use that the server dropped in between fails its request, as one
    in flight at that moment fails anyway; the error makes the pool drop all
    its older connections, so the requests after it reconnect.
    """

    @event.listens_for(engine, "checkin")
    def note_idle_since(dbapi_connection, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def ping_if_idle(dbapi_connection, record, proxy) -> None:
        idle_since = record.info.get("idle_since")  # none: a new connection
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            # The pool discards this connection and hands out a new one.
            raise DisconnectionError("an idle connection was closed") from error


def configure_logging(app: Flask) -> None:
    """Log to stdout at INFO, unless logging was already set up (tests, gunicorn)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            stream=sys.stdout,
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


def wants_json() -> bool:
    """Tell whether the client of this request expects JSON errors."""
    if request.path.startswith(JSON_PATH_PREFIXES):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def is_database_outage(error: BaseException) -> bool:
    """Tell whether an error means the database cannot be reached right now."""
    return isinstance(error, OperationalError) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    )


def register_error_handlers(app: Flask) -> None:
    """Answer errors with friendly pages for people and JSON for programs."""

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError):
        # Flask-WTF says 400; a missing or stale token is a refusal, so 403, which
        # is also what the OpenAPI contract promises for an unauthenticated call.
        message = f"{error.description} Reload the page and try again."
        if wants_json():
            return {"error": message}, 403
        return render_template("errors/error.html", error=Forbidden(message)), 403

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        headers = retry_after(error)
        if wants_json():
            return {"error": error.description}, error.code, headers
        template = "errors/404.html" if error.code == 404 else "errors/error.html"
        return render_template(template, error=error), error.code, headers

    # Registered by type, so Flask does not log an outage as a crash: a database
    # that is down is weather, not a bug. 503 and one log line, no traceback.
    @app.errorhandler(DBAPIError)
    def database_error(error: DBAPIError):
        db.session.rollback()
        if not is_database_outage(error):
            raise error  # a real bug: on to the 500 handler, traceback logged
        log.error("database unavailable on %s: %s", request.path, error.orig)
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        if wants_json():
            return {"error": "service temporarily unavailable"}, 503, headers
        return render_template("errors/500.html"), 503, headers

    # Flask logs every other unhandled exception, then routes it here.
    @app.errorhandler(InternalServerError)
    def server_error(error: InternalServerError):
        db.session.rollback()
        if wants_json():
            return {"error": "internal server error"}, 500
        return render_template("errors/500.html"), 500


def retry_after(error: HTTPException) -> dict[str, str]:
    """Retry-After for a request a rate limit refused (rate_limits.py says when
    its window starts afresh); none for other errors."""
    seconds = getattr(error, "retry_after", None)
    return {"Retry-After": str(seconds)} if seconds else {}


def register_template_helpers(app: Flask) -> None:
    """Add the Jinja filters the templates share."""

    @app.template_filter("usd")
    def usd(amount) -> str:
        return f"${int(amount):,}"

    @app.template_filter("price_range")
    def price_range(procedure) -> str:
        return f"{usd(procedure.price_min)} – {usd(procedure.price_max)}"


def refuse_malformed_urls() -> None:
    """Refuse huge query strings and URLs with NUL characters before any view.

    No page takes more than a short search, so a long query string is abuse. No
    slug, search or parameter can contain NUL, and PostgreSQL cannot compare text
    with one (the driver raises), so they would end as a 500, not a 400.
    """
    if len(request.query_string) > MAX_QUERY_STRING_BYTES:
        abort(
            414, description=f"the query string is over {MAX_QUERY_STRING_BYTES} bytes"
        )
    parts = [request.path]
    for name, value in request.args.items(multi=True):
        parts += [name, value]
    if any("\x00" in part for part in parts):
        abort(400, description="the URL must not contain NUL characters")


def set_security_headers(response):
    """Forbid framing, sniffing and third-party scripts on every response."""
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'self'; form-action 'self'; frame-ancestors 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def keep_out_of_shared_caches(response):
    """Pages and JSON answers carry a visitor's interests, CSRF token and
    cookies: no shared cache (a proxy, a CDN) may keep one and serve it to
    someone else. Static files stay cacheable."""
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "private, no-store"
        response.vary.add("Cookie")
    return response


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, Secure whenever the request came over HTTPS
    (directly, or through trusted proxies that say so: TRUSTED_PROXY_COUNT),
    without having to set SESSION_COOKIE_SECURE for each deployment."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return super().get_cookie_secure(app) or request.is_secure


app = create_app()
