"""The `metrics` blueprint: GET /metrics in Prometheus' text format, for this
machine, a bearer token or a signed-in admin (404 for anyone else); and the
request metrics behind it: latency per endpoint, never per raw path.

Under gunicorn (several worker processes) gunicorn.conf.py sets
PROMETHEUS_MULTIPROC_DIR: each worker writes its counts there and a scrape adds
them up (prometheus_client's multiprocess mode). Without it, as under
`flask run` and in tests, the process's own registry is served.
"""

import hmac
import ipaddress
import logging
import os
import time

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    g,
    request,
    request_finished,
    request_started,
)
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.exc import SQLAlchemyError

from admin import signed_in_admin
from personalization import telemetry
from personalization_system import current_system

log = logging.getLogger(__name__)

metrics = Blueprint("metrics", __name__)

REQUEST_SECONDS = Histogram(
    "antidote_http_request_duration_seconds",
    "Time to answer a request, by endpoint (the Flask endpoint name, or "
    "unmatched when no route matched) and method.",
    ["endpoint", "method"],
)
REQUESTS = Counter(
    "antidote_http_requests",
    "Requests answered, by endpoint, method and status code.",
    ["endpoint", "method", "status"],
)

# Label values come from these short lists, never from the request itself: a
# client can send any path or method name, and each value would be a new series.
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Headers a reverse proxy adds: a request carrying one came through a proxy.
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")
MULTIPROCESS = "metrics_multiprocess"


def init_app(app: Flask) -> None:
    """Serve /metrics and time every request of the app."""
    app.register_blueprint(metrics)
    # Signals, not before/after_request: request_started comes before any
    # before_request function (a rate limit can answer 429 in one), and
    # request_finished after every after_request function (impressions are
    # written there), so the time is the whole request's.
    request_started.connect(start_timer, app)
    request_finished.connect(observe_request, app)
    app.extensions[MULTIPROCESS] = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    if app.config["RANKING_DEBUG_LOG"]:
        telemetry.log.setLevel(logging.DEBUG)


def start_timer(sender: Flask, **extra) -> None:
    g.metrics_started = time.perf_counter()


def observe_request(sender: Flask, response, **extra) -> None:
    """Count the request and its time under its endpoint's name."""
    started = g.pop("metrics_started", None)
    if started is None:
        return
    endpoint = request.endpoint or UNMATCHED
    method = request.method if request.method in METHODS else "other"
    REQUEST_SECONDS.labels(endpoint, method).observe(time.perf_counter() - started)
    REQUESTS.labels(endpoint, method, str(response.status_code)).inc()


@metrics.get("/metrics")
def scrape():
    """The metrics in Prometheus' text format (OpenMetrics if asked for)."""
    if not may_read_metrics():
        abort(404)  # the same answer as for any unknown path
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return encode(registry_to_scrape()), 200, {"Content-Type": content_type}


def may_read_metrics() -> bool:
    """A valid bearer token, a signed-in admin, or a client on this machine."""
    return has_metrics_token() or from_this_machine() or signed_in_admin() is not None


def has_metrics_token() -> bool:
    """`Authorization: Bearer <METRICS_TOKEN>`, compared in constant time."""
    expected = current_app.config["METRICS_TOKEN"]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if not expected or scheme.lower() != "bearer" or not token.strip():
        return False
    return hmac.compare_digest(token.strip().encode(), expected.encode())


def from_this_machine() -> bool:
    """The client's address (after ProxyFix) is a loopback address.

    A reverse proxy on this machine that the app was not told to trust
    (TRUSTED_PROXY_COUNT=0) makes every visitor arrive from 127.0.0.1: a request
    it forwarded, which carries its headers, does not count as local.
    """
    if not current_app.config["TRUSTED_PROXY_COUNT"] and any(
        header in request.headers for header in FORWARDING_HEADERS
    ):
        return False
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def registry_to_scrape() -> CollectorRegistry:
    """What one scrape reads: every worker's metrics (multiprocess mode) or this
    process's, and the gauges read from the database now."""
    registry = CollectorRegistry(auto_describe=False)
    if current_app.extensions[MULTIPROCESS]:
        MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)
    registry.register(BacklogCollector())
    return registry


class BacklogCollector:
    """The Personalize outbox's backlog, counted in the database at scrape time:
    every worker would say the same, so no worker keeps a copy."""

    def collect(self):
        try:
            backlog = current_system().outbox_backlog()
        except SQLAlchemyError as error:  # the scrape still answers, without these
            log.warning("outbox backlog not read: %s", error.__class__.__name__)
            return
        yield GaugeMetricFamily(
            "antidote_outbox_pending_events",
            "Events queued for AWS Personalize, not yet delivered.",
            value=backlog.pending,
        )
        yield GaugeMetricFamily(
            "antidote_outbox_dead_letters",
            "Queued events Personalize refused too often to try again.",
            value=backlog.dead_letters,
        )
