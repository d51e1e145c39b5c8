"""The engine's Prometheus metrics (events accepted and rejected, ranking time,
fallbacks) and the DEBUG log of each ranking decision. No Flask here: metrics.py
serves these at /metrics, beside the request metrics.

Every label takes its values from a short fixed list (sources, reason names,
recommender names, item kinds), never from what a client sent, so the number of
series stays bounded whatever the traffic.
"""

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram

# `logging.getLogger("personalization.telemetry").setLevel(logging.DEBUG)`, or
# RANKING_DEBUG_LOG=true, logs one line per ranking.
log = logging.getLogger(__name__)

EVENTS_ACCEPTED = Counter(
    "antidote_events_accepted",
    "Events accepted into the engine, by source (tracker, amplitude).",
    ["source"],
)
EVENTS_REJECTED = Counter(
    "antidote_events_rejected",
    "Events refused, by source and reason (malformed, unknown_type, bad_target, "
    "bad_metadata, unknown_item, duplicate, ...).",
    ["source", "reason"],
)
RANKING_SECONDS = Histogram(
    "antidote_ranking_duration_seconds",
    "Time to rank one list, by recommender, operation (recommend, similar) and kind.",
    ["algorithm", "operation", "kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
RANKINGS = Counter(
    "antidote_rankings",
    "Lists ranked, by recommender, operation, kind and where the list came from "
    "(engine, personalize, fallback, empty).",
    ["algorithm", "operation", "kind", "source"],
)
FALLBACKS = Counter(
    "antidote_ranking_fallbacks",
    "Lists that fell back, by recommender, kind and reason (cold_start, "
    "popular_fill, personalize_timeout, personalize_circuit_open, ...).",
    ["algorithm", "kind", "reason"],
)


def accepted(source: str, count: int) -> None:
    """Count events accepted from a source."""
    if count:
        EVENTS_ACCEPTED.labels(source).inc(count)


def rejected(source: str, reason: str, count: int = 1) -> None:
    """Count events refused from a source, for one bounded reason."""
    if count:
        EVENTS_REJECTED.labels(source, reason).inc(count)


@dataclass
class Decision:
    """One ranking under way: what it is, and why it fell back."""

    algorithm: str
    operation: str
    kind: str
    subject: str
    # Where the list came from: engine, personalize, fallback, or empty.
    source: str = "empty"
    fallbacks: list[str] = field(default_factory=list)

    def fell_back(self, reason: str) -> None:
        if reason not in self.fallbacks:
            self.fallbacks.append(reason)


_active = threading.local()  # greenlet-local under gunicorn's gevent workers


def fell_back(reason: str) -> None:
    """Note why the ranking under way fell back (a bounded reason name)."""
    decision = getattr(_active, "decision", None)
    if decision is not None:
        decision.fell_back(reason)


@contextmanager
def ranking(
    algorithm: str, operation: str, kind: str, subject: str
) -> Iterator[Decision | None]:
    """Time one ranking, count it and its fallbacks, and log it at DEBUG.

    Rankings nested in it (a blend's popular fill, the local pool Personalize
    re-ranks) are part of it: they get None and are not measured twice.
    """
    if getattr(_active, "decision", None) is not None:
        yield None
        return
    decision = Decision(algorithm, operation, kind, subject)
    _active.decision = decision
    started = time.perf_counter()
    try:
        yield decision
    finally:
        _active.decision = None
    seconds = time.perf_counter() - started
    RANKING_SECONDS.labels(algorithm, operation, kind).observe(seconds)
    RANKINGS.labels(algorithm, operation, kind, decision.source).inc()
    for reason in decision.fallbacks:
        FALLBACKS.labels(algorithm, kind, reason).inc()
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "ranked %s %s for %s with %s: source=%s fallback=%s in %.1f ms",
            operation,
            kind,
            subject,
            algorithm,
            decision.source,
            ",".join(decision.fallbacks) or "none",
            seconds * 1000,
        )


def visitor_label(visitor_id: str | None) -> str:
    """A visitor as the DEBUG log names them: enough of the id to follow one
    visitor through a log, not the whole cookie value (which would let whoever
    reads the log browse as them)."""
    return f"visitor {visitor_id[:8]}" if visitor_id else "anonymous"
