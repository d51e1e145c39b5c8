"""The AWS Personalize adapter (boto3): re-ranking, user recommendations, similar
items, event streaming, catalog updates and user deletion, with strict timeouts, a
per-page budget and a circuit breaker. The engine reaches it through the
recommenders (personalization.recommenders, personalization.personalize)."""

import csv
import io
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
MAX_RESULTS = 500
# PutItems and PutUsers take at most 10 records a call.
MAX_RECORDS_PER_CALL = 10
# Personalize's longest categorical value, an IMPRESSION cell included.
MAX_CATEGORICAL_CHARS = 1000

# The few event types Personalize is given for the site's 17 interaction types
# (one dataset may hold at most 10 event types and metadata columns together).
# EVENT_VALUE is the type's weight; a negative weight always goes as "dismiss".
DISMISS = "dismiss"
PERSONALIZE_EVENT_TYPES = {
    **dict.fromkeys(
        ("view", "search", "initial_impression", "scroll_impression"), "view"
    ),
    "click": "click",
    **dict.fromkeys(("upvote", "share", "bookmark", "download", "comment"), "save"),
    **dict.fromkeys(("form_submit", "donate", "fundraise"), "convert"),
    **dict.fromkeys(("hide", "not_interested", "downvote", "flag_content"), DISMISS),
}
# The solution's eventValueThreshold: Personalize trains only on events whose
# value is at least this. Every positive event goes with its weight (> 0) and
# every dismissal with its negative weight, so negatives are never positives.
EVENT_VALUE_THRESHOLD = 0.0


def personalize_event_type(interaction_type: str, value: float) -> str | None:
    """The EVENT_TYPE an interaction goes to Personalize as, or None when it is
    not sent (no weight, such as "engaged", or a type Personalize is not given).
    The one mapping of the bulk export and of PutEvents."""
    if value < 0:
        return DISMISS
    event_type = PERSONALIZE_EVENT_TYPES.get(interaction_type)
    if value == 0 or event_type == DISMISS:
        return None  # no signal, or a dismissal weighted as interest: ambiguous
    return event_type


def impression_ids(item_ids: list[str]) -> list[str]:
    """The first ids of a shown list that fit an impression: 25 ids (PutEvents)
    and 1000 characters once joined with "|" (the IMPRESSION column)."""
    kept: list[str] = []
    length = -1
    for item_id in item_ids[:MAX_IMPRESSION_IDS]:
        length += len(item_id) + 1
        if length > MAX_CATEGORICAL_CHARS:
            break
        kept.append(item_id)
    return kept


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
        event["impression"] = impression_ids(impression)
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
        user_campaign_arn: str = "",
        dismissed_filter_arn: str = "",
        items_dataset_arn: str = "",
        users_dataset_arn: str = "",
        deletion: "DeletionTarget | None" = None,
        admin_client: Any = None,
        s3_client: Any = None,
    ):
        self.campaign_arn = campaign_arn
        self.sims_campaign_arn = sims_campaign_arn
        self.tracking_id = tracking_id
        self.user_campaign_arn = user_campaign_arn
        self.dismissed_filter_arn = dismissed_filter_arn
        self.items_dataset_arn = items_dataset_arn
        self.users_dataset_arn = users_dataset_arn
        self.deletion = deletion
        self.runtime = runtime_client
        self.events = events_client
        # The control plane (data deletion jobs) and S3 (their input files).
        self.admin = admin_client
        self.s3 = s3_client
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

        deletion = DeletionTarget.from_config(config)
        return cls(
            campaign_arn=config["AWS_PERSONALIZE_CAMPAIGN_ARN"],
            sims_campaign_arn=config["AWS_PERSONALIZE_SIMS_CAMPAIGN_ARN"],
            tracking_id=config["AWS_PERSONALIZE_TRACKING_ID"],
            user_campaign_arn=config["AWS_PERSONALIZE_USER_CAMPAIGN_ARN"],
            dismissed_filter_arn=config["AWS_PERSONALIZE_DISMISSED_FILTER_ARN"],
            items_dataset_arn=config["AWS_PERSONALIZE_ITEMS_DATASET_ARN"],
            users_dataset_arn=config["AWS_PERSONALIZE_USERS_DATASET_ARN"],
            deletion=deletion,
            # Off the page path (sync-events): boto3's own timeouts and retries.
            admin_client=boto3.client(
                "personalize",
                region_name=config["AWS_REGION"],
                endpoint_url=config["AWS_PERSONALIZE_ENDPOINT_URL"] or None,
            )
            if deletion
            else None,
            s3_client=boto3.client("s3", region_name=config["AWS_REGION"])
            if deletion
            else None,
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

    def user_recommendations(
        self, user_id: str, kind: str, limit: int
    ) -> list[tuple[str, float]] | None:
        """Items of one kind for a visitor from the user-personalization campaign,
        dismissed ones filtered out; None when not configured or on failure.

        The filter's expression takes the kind as $ITEM_TYPE (see the README).
        """
        self._failure.reason = None
        if not self.user_campaign_arn:
            return None
        request: dict[str, Any] = {
            "campaignArn": self.user_campaign_arn,
            "userId": user_id,
            "numResults": max(1, min(limit, MAX_RESULTS)),
        }
        if self.dismissed_filter_arn:
            request["filterArn"] = self.dismissed_filter_arn
            request["filterValues"] = {"ITEM_TYPE": json.dumps(kind)}
        try:
            response = self._page_call(
                "GetRecommendations",
                lambda: self.runtime.get_recommendations(**request),
            )
        except PersonalizeUnavailable:
            return None
        return [
            (entry["itemId"], float(entry.get("score", 0.0)))
            for entry in response.get("itemList", [])
        ]

    def put_items(self, items: list[dict]) -> int:
        """Add or replace Items dataset records, 10 a call; raise if refused."""
        return self._put_records("PutItems", self.items_dataset_arn, "items", items)

    def put_users(self, users: list[dict]) -> int:
        """Add or replace Users dataset records, 10 a call; raise if refused."""
        return self._put_records("PutUsers", self.users_dataset_arn, "users", users)

    def _put_records(
        self, operation: str, dataset_arn: str, field: str, records: list[dict]
    ) -> int:
        if not dataset_arn:
            raise PersonalizeUnavailable(
                f"no dataset ARN is set for {operation}", "not_configured"
            )
        call = getattr(self.events, f"put_{field}")
        for start in range(0, len(records), MAX_RECORDS_PER_CALL):
            chunk = records[start : start + MAX_RECORDS_PER_CALL]
            self._call(
                operation,
                lambda chunk=chunk: call(datasetArn=dataset_arn, **{field: chunk}),
                self.events_breaker,
            )
        return len(records)

    def delete_users(self, user_ids: list[str], job_name: str) -> str:
        """Erase visitors from the dataset group: write their ids as a CSV to S3,
        then start a data deletion job on it; return the job's ARN."""
        target = self.deletion
        if target is None:
            raise PersonalizeUnavailable(
                "Personalize data deletion is not configured", "not_configured"
            )
        if not user_ids:
            raise ValueError("a data deletion job needs at least one user id")
        body = io.StringIO()
        writer = csv.writer(body, lineterminator="\n")
        writer.writerow(["USER_ID"])
        writer.writerows([user_id] for user_id in user_ids)
        key = f"{target.prefix}{job_name}.csv"
        self._call(
            "PutObject",
            lambda: self.s3.put_object(
                Bucket=target.bucket,
                Key=key,
                Body=body.getvalue().encode(),
                ContentType="text/csv",
            ),
            self.events_breaker,
        )
        response = self._call(
            "CreateDataDeletionJob",
            lambda: self.admin.create_data_deletion_job(
                jobName=job_name,
                datasetGroupArn=target.dataset_group_arn,
                dataSource={"dataLocation": f"s3://{target.bucket}/{key}"},
                roleArn=target.role_arn,
            ),
            self.events_breaker,
        )
        return response.get("dataDeletionJobArn", "")

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


@dataclass(frozen=True)
class DeletionTarget:
    """Where "forget me" reaches Personalize: the dataset group, the S3 bucket
    and key prefix the user-id CSV is written to, and the role that reads it."""

    dataset_group_arn: str
    bucket: str
    prefix: str
    role_arn: str

    @classmethod
    def from_config(cls, config) -> "DeletionTarget | None":
        """The target when all of its settings are given, else None."""
        target = cls(
            config["AWS_PERSONALIZE_DATASET_GROUP_ARN"],
            config["AWS_PERSONALIZE_DELETION_BUCKET"],
            config["AWS_PERSONALIZE_DELETION_PREFIX"],
            config["AWS_PERSONALIZE_ROLE_ARN"],
        )
        if target.dataset_group_arn and target.bucket and target.role_arn:
            return target
        return None
