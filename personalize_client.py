"""The AWS Personalize adapter (boto3): re-ranking, similar items and event
streaming, with strict timeouts, a per-page budget and a circuit breaker. The
engine reaches it through personalization.recommenders.PersonalizeRecommender."""

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

CALLS = Counter(
    "antidote_personalize_calls",
    "Calls to AWS Personalize by operation and outcome (ok, timeout, throttled, "
    "error, circuit_open, budget: the last two were never sent).",
    ["operation", "outcome"],
)
# livemax: with several gunicorn workers, open if any running worker's is open.
CIRCUIT_OPEN = Gauge(
    "antidote_personalize_circuit_open",
    "1 while a Personalize circuit breaker is open (ranking, events), else 0.",
    ["circuit"],
    multiprocess_mode="livemax",
)

# Limits of the Personalize APIs. botocore's Stubber checks required fields and
# types but not these maximums, so they are enforced here.
MAX_RERANK_ITEMS = 500
MAX_EVENTS_PER_CALL = 10
MAX_IMPRESSION_IDS = 25
MAX_PROPERTIES_CHARS = 1024
MAX_SIMILAR_RESULTS = 500


class PersonalizeUnavailable(RuntimeError):
    """Personalize did not accept a call (error, timeout, or the circuit is open).

    reason: timeout, throttled, error, circuit_open, budget or not_configured.
    """

    def __init__(self, message: str, reason: str = "error"):
        super().__init__(message)
        self.reason = reason


def failure_reason(error: Exception) -> str:
    """Name a botocore error for metrics: timeout, throttled or error."""
    from botocore.exceptions import ClientError, ConnectTimeoutError, ReadTimeoutError

    if isinstance(error, ConnectTimeoutError | ReadTimeoutError):
        return "timeout"
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("ThrottlingException", "TooManyRequestsException"):
            return "throttled"
    return "error"


class CircuitBreaker:
    """Stops calling a failing service for a cool-down, then lets one call through.

    After `failure_threshold` failures in a row the circuit opens: calls are
    refused at once, so pages do not wait on timeouts. After `cooldown_seconds`
    one trial call is allowed; success closes the circuit, failure reopens it.
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        cooldown_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._trial_running = False
        self._lock = threading.Lock()
        # Told True when the circuit opens and False when it closes (a gauge).
        self.on_change: Callable[[bool], None] | None = None

    def watch(self, on_change: Callable[[bool], None]) -> None:
        """Report the circuit's state now and at each change."""
        self.on_change = on_change
        on_change(self.is_open)

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def allow(self) -> bool:
        with self._lock:
            if self.opened_at is None:
                return True
            if self._trial_running:
                return False
            if self.clock() - self.opened_at >= self.cooldown_seconds:
                self._trial_running = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            was_open = self.opened_at is not None
            self.failures = 0
            self.opened_at = None
            self._trial_running = False
        if was_open and self.on_change:
            self.on_change(False)

    def record_failure(self) -> None:
        with self._lock:
            self.failures += 1
            self._trial_running = False
            opening = False
            if self.failures >= self.failure_threshold:
                opening = self.opened_at is None
                if opening:
                    log.warning(
                        "Personalize circuit opened after %d failures", self.failures
                    )
                self.opened_at = self.clock()
        if opening and self.on_change:
            self.on_change(True)


def personalize_event(
    event_id: str,
    event_type: str,
    item_id: str,
    event_value: float,
    sent_at: datetime,
    properties: dict | None = None,
    impression: list[str] | None = None,
) -> dict[str, Any]:
    """Build one PutEvents entry, within the API's limits.

    Properties longer than 1 KB are dropped (not cut, which would break their
    JSON); impressions keep their first 25 ids.
    """
    event: dict[str, Any] = {
        "eventId": event_id,
        "eventType": event_type,
        "itemId": item_id,
        "eventValue": float(event_value),
        "sentAt": sent_at,
    }
    if properties:
        encoded = json.dumps(properties, separators=(",", ":"))
        if len(encoded) <= MAX_PROPERTIES_CHARS:
            event["properties"] = encoded
        else:
            log.info("event %s: properties over %d chars dropped", event_id, 1024)
    if impression:
        event["impression"] = impression[:MAX_IMPRESSION_IDS]
    return event


class PageBudget:
    """The time one page may spend waiting on Personalize, shared by its calls.

    A page can ask for several rankings (the home page asks for three); each call
    is bounded by the timeouts, but their sum would not be. A call starts only if
    its worst case still fits in what is left, and after a failure none does: the
    rest of the page keeps the local order. Per thread: each request is served by
    one thread.
    """

    def __init__(self, seconds: float, worst_call_seconds: float):
        self.seconds = seconds
        self.worst_call_seconds = worst_call_seconds
        self._spent = threading.local()

    def start_page(self) -> None:
        self._spent.seconds = 0.0

    def end_page(self) -> None:
        """Outside a request (commands, the sync thread) no budget applies."""
        self._spent.seconds = None

    def allows_a_call(self) -> bool:
        spent = getattr(self._spent, "seconds", None)
        if spent is None:
            return True
        return spent + self.worst_call_seconds <= self.seconds + 1e-9

    def spend(self, seconds: float) -> None:
        if getattr(self._spent, "seconds", None) is not None:
            self._spent.seconds += seconds

    def exhaust(self) -> None:
        if getattr(self._spent, "seconds", None) is not None:
            self._spent.seconds = self.seconds


class PersonalizeClient:
    """Calls personalize-runtime and personalize-events through boto3.

    Every call is bounded by the client's connect and read timeouts, and a page's
    calls together by its PageBudget; failures open the circuit breaker, and the
    caller falls back to the local ranking.
    """

    def __init__(
        self,
        *,
        campaign_arn: str = "",
        sims_campaign_arn: str = "",
        tracking_id: str = "",
        runtime_client: Any = None,
        events_client: Any = None,
        breaker: CircuitBreaker | None = None,
        events_breaker: CircuitBreaker | None = None,
        page_budget: PageBudget | None = None,
    ):
        self.campaign_arn = campaign_arn
        self.sims_campaign_arn = sims_campaign_arn
        self.tracking_id = tracking_id
        self.runtime = runtime_client
        self.events = events_client
        # Separate circuits: a streaming problem must not switch off re-ranking.
        self.breaker = breaker or CircuitBreaker()
        self.events_breaker = events_breaker or CircuitBreaker()
        self.page_budget = page_budget
        self.enabled = bool(campaign_arn)
        self.breaker.watch(CIRCUIT_OPEN.labels("ranking").set)
        self.events_breaker.watch(CIRCUIT_OPEN.labels("events").set)
        # Why this thread's latest page call failed (see last_failure).
        self._failure = threading.local()

    @classmethod
    def from_config(cls, config) -> "PersonalizeClient":
        """Build boto3 clients from the app's AWS_PERSONALIZE_* settings."""
        import boto3
        from botocore.config import Config

        def client(service: str, attempts: int):
            return boto3.client(
                service,
                region_name=config["AWS_REGION"],
                endpoint_url=config["AWS_PERSONALIZE_ENDPOINT_URL"] or None,
                config=Config(
                    connect_timeout=config["AWS_PERSONALIZE_CONNECT_TIMEOUT"],
                    read_timeout=config["AWS_PERSONALIZE_READ_TIMEOUT"],
                    retries={"total_max_attempts": attempts, "mode": "standard"},
                ),
            )

        return cls(
            campaign_arn=config["AWS_PERSONALIZE_CAMPAIGN_ARN"],
            sims_campaign_arn=config["AWS_PERSONALIZE_SIMS_CAMPAIGN_ARN"],
            tracking_id=config["AWS_PERSONALIZE_TRACKING_ID"],
            # A retry on the page path would double a slow answer's wait; the
            # breaker and the local order handle failures instead.
            runtime_client=client("personalize-runtime", 1),
            events_client=client(
                "personalize-events", config["AWS_PERSONALIZE_MAX_ATTEMPTS"]
            ),
            breaker=CircuitBreaker(
                config["AWS_PERSONALIZE_FAILURE_THRESHOLD"],
                config["AWS_PERSONALIZE_COOLDOWN_SECONDS"],
            ),
            events_breaker=CircuitBreaker(
                config["AWS_PERSONALIZE_FAILURE_THRESHOLD"],
                config["AWS_PERSONALIZE_COOLDOWN_SECONDS"],
            ),
            page_budget=PageBudget(
                config["AWS_PERSONALIZE_PAGE_BUDGET"],
                config["AWS_PERSONALIZE_CONNECT_TIMEOUT"]
                + config["AWS_PERSONALIZE_READ_TIMEOUT"],
            ),
        )

    def start_page(self) -> None:
        """A request begins: it gets the whole page budget."""
        if self.page_budget:
            self.page_budget.start_page()

    def end_page(self, error: BaseException | None = None) -> None:
        """A request ended (a teardown_request callback)."""
        if self.page_budget:
            self.page_budget.end_page()

    def last_failure(self) -> str | None:
        """Why this thread's latest re-ranking or similar-items call got no answer
        (timeout, throttled, error, circuit_open, budget), or None."""
        return getattr(self._failure, "reason", None)

    def _page_call(self, operation: str, call: Callable[[], Any]) -> Any:
        """A call on the page path: within the page's budget, then the breaker."""
        budget = self.page_budget
        if budget and not budget.allows_a_call():
            CALLS.labels(operation, "budget").inc()
            self._failure.reason = "budget"
            raise PersonalizeUnavailable(
                "the page's Personalize budget is spent", "budget"
            )
        started = time.perf_counter()
        try:
            return self._call(operation, call, self.breaker)
        except PersonalizeUnavailable as error:
            self._failure.reason = error.reason
            if budget:
                budget.exhaust()  # failing now: no second wait on this page
            raise
        finally:
            if budget:
                budget.spend(time.perf_counter() - started)

    def _call(
        self, operation: str, call: Callable[[], Any], breaker: CircuitBreaker
    ) -> Any:
        """Run one API call through a breaker; raise PersonalizeUnavailable."""
        from botocore.exceptions import BotoCoreError, ClientError

        if not breaker.allow():
            CALLS.labels(operation, "circuit_open").inc()
            raise PersonalizeUnavailable("circuit open", "circuit_open")
        started = time.perf_counter()
        try:
            response = call()
        except (BotoCoreError, ClientError) as error:
            breaker.record_failure()
            reason = failure_reason(error)
            CALLS.labels(operation, reason).inc()
            log.warning(
                "Personalize %s failed after %.0f ms: %s",
                operation,
                (time.perf_counter() - started) * 1000,
                error,
            )
            raise PersonalizeUnavailable(str(error), reason) from error
        breaker.record_success()
        CALLS.labels(operation, "ok").inc()
        return response

    def rerank(
        self, user_id: str, item_ids: list[str]
    ) -> list[tuple[str, float]] | None:
        """Order candidates with GetPersonalizedRanking; None to keep local order."""
        self._failure.reason = None
        if not self.campaign_arn or not item_ids:
            return None
        try:
            response = self._page_call(
                "GetPersonalizedRanking",
                lambda: self.runtime.get_personalized_ranking(
                    campaignArn=self.campaign_arn,
                    userId=user_id,
                    inputList=item_ids[:MAX_RERANK_ITEMS],
                ),
            )
        except PersonalizeUnavailable:
            return None
        return [
            (entry["itemId"], float(entry.get("score", 0.0)))
            for entry in response.get("personalizedRanking", [])
        ]

    def similar_items(self, item_id: str, limit: int) -> list[tuple[str, float]] | None:
        """Items like this one from the SIMS campaign; None when not configured."""
        self._failure.reason = None
        if not self.sims_campaign_arn:
            return None
        try:
            response = self._page_call(
                "GetRecommendations",
                lambda: self.runtime.get_recommendations(
                    campaignArn=self.sims_campaign_arn,
                    itemId=item_id,
                    numResults=min(limit, MAX_SIMILAR_RESULTS),
                ),
            )
        except PersonalizeUnavailable:
            return None
        return [
            (entry["itemId"], float(entry.get("score", 0.0)))
            for entry in response.get("itemList", [])
        ]

    def put_events(self, user_id: str, session_id: str, events: list[dict]) -> None:
        """Send up to 10 events of one visitor session; raise if not accepted."""
        if not self.tracking_id:
            raise PersonalizeUnavailable(
                "AWS_PERSONALIZE_TRACKING_ID is not set", "not_configured"
            )
        if not 1 <= len(events) <= MAX_EVENTS_PER_CALL:
            raise ValueError(f"PutEvents takes 1 to {MAX_EVENTS_PER_CALL} events")
        self._call(
            "PutEvents",
            lambda: self.events.put_events(
                trackingId=self.tracking_id,
                userId=user_id,
                sessionId=session_id,
                eventList=events,
            ),
            self.events_breaker,
        )
