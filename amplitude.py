"""Reading Amplitude payloads: every real payload shape, event times, visitor and
item references, de-duplication keys. Pure parsing, no database: what it reads
goes to the facade (PersonalizationSystem.record_external) to be resolved and
recorded.
"""

import hashlib
import re
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from personalization.events import IMPRESSION_TYPES, ExternalEvent, is_storable_text

MAX_EVENTS = 2000
# Items one event may name (an impression's items_shown): each becomes an
# interaction, and no page shows more. Repeats count once; the rest are dropped
# and reported.
MAX_ITEMS_PER_EVENT = 50
# The name Amplitude's events carry in metadata, and that keys their visitor ids.
SOURCE = "amplitude"
SKIPPED_TYPES = {"$identify", "$groupidentify", "session_start", "session_end"}
EXPORT_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S")
# Epoch values below this are seconds; above, milliseconds (1e11 s is year 5138).
SECONDS_CEILING = 1e11
# Client clocks drift: an event up to this far in the future is taken as now.
FUTURE_TOLERANCE = timedelta(days=1)


class PayloadError(ValueError):
    """The body is JSON but not any shape of Amplitude payload."""


class SkipEvent(ValueError):
    """One event is valid JSON but not something to record; the message says why,
    and `code` which of SKIP_CODES it is (counted by metrics and the dashboard)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


# Why an event is skipped, in a word: a bounded set, unlike the messages.
SKIP_CODES = (
    *("cohort", "malformed", "not_interaction", "unknown_type", "no_item"),
    *("no_visitor", "too_old", "future"),
)


def unpack_payload(payload: Any) -> tuple[list, str | None]:
    """Return the events of any payload shape, or a reason to skip it whole.

    Shapes: one bare export-format event (the Webhook destination's default), a
    custom-template object, {"events": [...]} (HTTP V2 / batch), a top-level
    array (legacy SDK), and cohort webhooks, which are recognised and skipped.
    """
    if isinstance(payload, list):
        return payload, None
    if not isinstance(payload, dict):
        raise PayloadError("body must be a JSON object or array of events")
    if "cohort_id" in payload and "users" in payload:
        return [payload], (
            "cohort webhook: cohort membership is not used for personalization"
        )
    if "events" in payload:
        if not isinstance(payload["events"], list):
            raise PayloadError('"events" must be an array')
        return payload["events"], None
    return [payload], None


def normalize_event_type(name: str) -> str:
    """'Initial Impression', 'initial-impression' -> 'initial_impression'."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def text_id(value: Any) -> str | None:
    """An id as a non-empty string, or None for null, empty or non-scalar values."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | str):
        text = str(value).strip()
        return text if text and is_storable_text(text) else None
    return None


def parse_time_text(text: str) -> datetime | None:
    """Read Amplitude's export format or ISO 8601; naive times are UTC."""
    for pattern in EXPORT_TIME_FORMATS:
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=UTC)
        except ValueError:
            pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def from_epoch(value: float) -> datetime | None:
    """Epoch seconds or milliseconds to a UTC time."""
    seconds = value if abs(value) < SECONDS_CEILING else value / 1000
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def event_time(raw: dict, received_at: datetime) -> datetime:
    """`time` as a number, else `event_time`/`client_event_time`, else ISO strings,
    else `timestamp`; else the time it was received."""
    number = raw.get("time")
    if isinstance(number, int | float) and not isinstance(number, bool):
        moment = from_epoch(number)
        if moment:
            return moment
    for key in ("event_time", "client_event_time", "time"):
        if isinstance(raw.get(key), str):
            moment = parse_time_text(raw[key])
            if moment:
                return moment
    stamp = raw.get("timestamp")
    if isinstance(stamp, int | float) and not isinstance(stamp, bool):
        moment = from_epoch(stamp)
        if moment:
            return moment
    if isinstance(stamp, str):
        moment = parse_time_text(stamp)
        if moment:
            return moment
    return received_at


def item_references(properties: dict, event_type: str) -> list[str]:
    """The catalog items an event is about, as written: "procedure:12",
    "procedure:botox", a bare slug, or item_type + item_id; impressions list
    theirs in items_shown (all of them: see capped)."""
    if event_type in IMPRESSION_TYPES and isinstance(
        properties.get("items_shown"), list
    ):
        return [ref for ref in map(text_id, properties["items_shown"]) if ref]
    item_id = text_id(properties.get("item_id"))
    if not item_id:
        return []
    item_type = text_id(properties.get("item_type"))
    if item_type and ":" not in item_id:
        return [f"{item_type.lower()}:{item_id}"]
    return [item_id]


def read_event(
    index: int, raw: Any, known_types: Collection[str], received_at: datetime
) -> ExternalEvent:
    """Read one event of any shape; raise SkipEvent with the reason to skip it."""
    if not isinstance(raw, dict):
        raise SkipEvent("event is not a JSON object", "malformed")
    name = text_id(raw.get("event_type")) or text_id(raw.get("name"))
    if not name:
        raise SkipEvent("event has no event_type", "malformed")
    if name in SKIPPED_TYPES or name.startswith("[Amplitude]"):
        raise SkipEvent(f"event type {name!r} is not an interaction", "not_interaction")
    event_type = normalize_event_type(name)
    if event_type in SKIPPED_TYPES:
        raise SkipEvent(f"event type {name!r} is not an interaction", "not_interaction")
    if event_type not in known_types:
        raise SkipEvent(f"unknown event type {name!r}", "unknown_type")
    properties = raw.get("event_properties")
    if properties is None:
        properties = raw.get("properties")  # custom templates
    if not isinstance(properties, dict):
        properties = {}
    listed = item_references(properties, event_type)
    if not listed:
        raise SkipEvent(
            "event names no catalog item (event_properties.item_id)", "no_item"
        )
    refs = list(dict.fromkeys(listed))[:MAX_ITEMS_PER_EVENT]
    occurred_at = event_time(raw, received_at)
    user_id = text_id(raw.get("user_id")) or text_id(raw.get("external_id"))
    device_id = text_id(raw.get("device_id"))
    visitor_hint = text_id(properties.get("visitor_id"))
    if not (user_id or device_id or visitor_hint):
        raise SkipEvent("event has no visitor_id, user_id or device_id", "no_visitor")
    session = text_id(raw.get("session_id"))
    return ExternalEvent(
        source=SOURCE,
        index=index,
        type=event_type,
        occurred_at=occurred_at,
        session_id=f"amplitude:{session}"[:64]
        if session and session != "-1"
        else "amplitude",
        item_refs=refs,
        dedup_key=dedup_key(raw, event_type, user_id or device_id, occurred_at, refs),
        visitor_hint=visitor_hint.lower() if visitor_hint else None,
        user_id=user_id,
        device_id=device_id,
        items_listed=len(listed),
    )


def dedup_key(
    raw: dict, event_type: str, who: str | None, when: datetime, refs: list[str]
) -> str:
    """`uuid`, else the insert id with the device, else a hash of what happened."""
    uuid = text_id(raw.get("uuid"))
    if uuid:
        key = f"uuid:{uuid}"
    elif text_id(raw.get("$insert_id")) or text_id(raw.get("insert_id")):
        insert_id = text_id(raw.get("$insert_id")) or text_id(raw.get("insert_id"))
        key = f"insert:{insert_id}:{text_id(raw.get('device_id')) or ''}"
    else:
        key = f"event:{event_type}:{who}:{when.isoformat()}:{','.join(refs)}"
    return hashlib.sha256(key.encode()).hexdigest()


def read_events(
    raw_events: list,
    known_types: Collection[str],
    received_at: datetime,
    retention_days: int,
    skip_reason: str | None = None,
) -> tuple[list[ExternalEvent], list[dict[str, Any]]]:
    """Read a payload's events; return those worth resolving, and for each of the
    others its index and the reason it is skipped."""
    if skip_reason:
        return [], [
            {"index": i, "reason": skip_reason, "code": "cohort"}
            for i in range(len(raw_events))
        ]
    events: list[ExternalEvent] = []
    errors: list[dict[str, Any]] = []
    oldest = received_at - timedelta(days=retention_days)
    for index, raw in enumerate(raw_events):
        try:
            event = read_event(index, raw, known_types, received_at)
            if event.occurred_at < oldest:
                raise SkipEvent(
                    f"event is older than the {retention_days}-day retention",
                    "too_old",
                )
            if event.occurred_at > received_at + FUTURE_TOLERANCE:
                raise SkipEvent("event time is more than a day in the future", "future")
            events.append(event)
        except SkipEvent as skipped:
            errors.append(
                {"index": index, "reason": str(skipped), "code": skipped.code}
            )
    return events, errors


def trimmed(events: list[ExternalEvent]) -> list[dict[str, int]]:
    """The events that named more items than were kept (repeats, or past the cap)."""
    return [
        {
            "index": event.index,
            "listed": event.items_listed,
            "kept": len(event.item_refs),
        }
        for event in events
        if event.items_listed > len(event.item_refs)
    ]


def summary(
    processed: int,
    errors: list[dict],
    duplicates: int,
    trimmed_items: list[dict] | None = None,
) -> dict[str, Any]:
    """The webhook's answer: what was recorded, skipped (and why), repeated, and
    which events had items dropped."""
    return {
        "message": "Webhook successfully processed",
        "processed": processed,
        "skipped": len(errors),
        "duplicates": duplicates,
        "errors": sorted(errors, key=lambda e: e["index"]),
        "trimmed": trimmed_items or [],
    }
