"""Amplitude events into personalization: every real payload shape, event times,
visitor and item references, weights, impressions and de-duplication.

Pure reading first (unpack_payload, read_event), then `ingest`, which resolves
visitors and items against the database and records the events in one transaction.
"""

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select

from models import (
    UserCategoryAffinity,
    UserInteraction,
    WebhookEventKey,
    db,
    dialect_insert,
)
from personalization_system import (
    CATALOG_MODELS,
    Event,
    PersonalizationEngine,
    VisitorEvent,
    is_storable_text,
)
from personalize_client import MAX_IMPRESSION_IDS

MAX_EVENTS = 2000
# How long de-duplication keys are kept: Amplitude retries for 4 hours.
DEDUP_DAYS = 7
SKIPPED_TYPES = {"$identify", "$groupidentify", "session_start", "session_end"}
IMPRESSION_TYPES = {"initial_impression", "scroll_impression"}
EXPORT_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S")
# Epoch values below this are seconds; above, milliseconds (1e11 s is year 5138).
SECONDS_CEILING = 1e11
# Client clocks drift: an event up to this far in the future is taken as now.
FUTURE_TOLERANCE = timedelta(days=1)
VISITOR_ID = re.compile(r"[0-9a-f]{32}")


class PayloadError(ValueError):
    """The body is JSON but not any shape of Amplitude payload."""


class SkipEvent(ValueError):
    """One event is valid JSON but not something to record; the message says why."""


@dataclass
class IncomingEvent:
    """One Amplitude event, read and normalised, not yet resolved."""

    index: int
    event_type: str
    occurred_at: datetime
    visitor_hint: str | None
    user_id: str | None
    device_id: str | None
    session_id: str
    item_refs: list[str]
    dedup_key: str
    visitor: str | None = None
    items: list[tuple[str, int]] = field(default_factory=list)


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
    theirs in items_shown."""
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
    index: int, raw: Any, weights: dict[str, float], received_at: datetime
) -> IncomingEvent:
    """Read one event of any shape; raise SkipEvent with the reason to skip it."""
    if not isinstance(raw, dict):
        raise SkipEvent("event is not a JSON object")
    name = text_id(raw.get("event_type")) or text_id(raw.get("name"))
    if not name:
        raise SkipEvent("event has no event_type")
    if name in SKIPPED_TYPES or name.startswith("[Amplitude]"):
        raise SkipEvent(f"event type {name!r} is not an interaction")
    event_type = normalize_event_type(name)
    if event_type in SKIPPED_TYPES:
        raise SkipEvent(f"event type {name!r} is not an interaction")
    if event_type not in weights:
        raise SkipEvent(f"unknown event type {name!r}")
    properties = raw.get("event_properties")
    if properties is None:
        properties = raw.get("properties")  # custom templates
    if not isinstance(properties, dict):
        properties = {}
    refs = item_references(properties, event_type)
    if not refs:
        raise SkipEvent("event names no catalog item (event_properties.item_id)")
    occurred_at = event_time(raw, received_at)
    user_id = text_id(raw.get("user_id")) or text_id(raw.get("external_id"))
    device_id = text_id(raw.get("device_id"))
    visitor_hint = text_id(properties.get("visitor_id"))
    if not (user_id or device_id or visitor_hint):
        raise SkipEvent("event has no visitor_id, user_id or device_id")
    session = text_id(raw.get("session_id"))
    return IncomingEvent(
        index=index,
        event_type=event_type,
        occurred_at=occurred_at,
        visitor_hint=visitor_hint.lower() if visitor_hint else None,
        user_id=user_id,
        device_id=device_id,
        session_id=f"amplitude:{session}"[:64]
        if session and session != "-1"
        else "amplitude",
        item_refs=refs,
        dedup_key=dedup_key(raw, event_type, user_id or device_id, occurred_at, refs),
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


def resolve_items(events: list[IncomingEvent]) -> None:
    """Turn item references into (type, id) of existing catalog items, batched."""
    wanted: dict[str, set[str]] = defaultdict(set)
    bare: set[str] = set()
    for event in events:
        for ref in event.item_refs:
            kind, _, key = ref.partition(":")
            if key and kind in CATALOG_MODELS:
                wanted[kind].add(key)
            else:
                bare.add(ref)
    found: dict[tuple[str, str], int] = {}
    for kind, model in CATALOG_MODELS.items():
        keys = wanted[kind] | bare
        if not keys:
            continue
        ids = [int(k) for k in keys if k.isdigit() and len(k) < 10]
        rows = db.session.execute(
            select(model.id, model.slug).where(
                or_(model.id.in_(ids), model.slug.in_(sorted(keys)))
            )
        )
        for item_id, slug in rows:
            found[(kind, str(item_id))] = item_id
            found[(kind, slug)] = item_id
    for event in events:
        for ref in event.item_refs:
            kind, _, key = ref.partition(":")
            if key and kind in CATALOG_MODELS:
                match = found.get((kind, key))
                if match:
                    event.items.append((kind, match))
            else:  # a bare slug: the first type that has it
                for kind in CATALOG_MODELS:
                    if (kind, ref) in found and not ref.isdigit():
                        event.items.append((kind, found[(kind, ref)]))
                        break


def resolve_visitors(
    events: list[IncomingEvent], engine: PersonalizationEngine
) -> None:
    """Pick each event's visitor: a known site visitor id passed by the page, else
    the Amplitude user id, else the device id, keyed-hashed like fingerprints."""
    hints = {e.visitor_hint for e in events if e.visitor_hint}
    hints = {h for h in hints if VISITOR_ID.fullmatch(h)}
    known: set[str] = set()
    if hints:
        for model in (UserInteraction, UserCategoryAffinity):
            known |= set(
                db.session.scalars(
                    select(model.user_id)
                    .where(model.user_id.in_(sorted(hints)))
                    .distinct()
                )
            )
    for event in events:
        if event.visitor_hint in known:
            event.visitor = event.visitor_hint
        elif event.user_id:
            event.visitor = engine.external_visitor_id("amplitude-user", event.user_id)
        else:
            event.visitor = engine.external_visitor_id(
                "amplitude-device", event.device_id or event.visitor_hint or ""
            )


def new_keys(keys: list[str], received_at: datetime) -> set[str]:
    """Store de-duplication keys; return those not seen before.

    ON CONFLICT DO NOTHING: a retried delivery, even one racing the first, finds
    its key taken. Stored in the caller's transaction, with the events.
    """
    if not keys:
        return set()
    table = WebhookEventKey.__table__
    statement = (
        dialect_insert(table)
        .values([{"key_hash": key, "received_at": received_at} for key in keys])
        .on_conflict_do_nothing(index_elements=[table.c.key_hash])
        .returning(table.c.key_hash)
    )
    return set(db.session.scalars(statement))


def to_events(incoming: IncomingEvent) -> list[Event]:
    """One site Event per item; an impression's first event carries the list."""
    metadata = {"source": "amplitude"}
    if incoming.event_type not in IMPRESSION_TYPES:
        kind, item_id = incoming.items[0]
        return [
            Event(incoming.event_type, kind, item_id, metadata, incoming.occurred_at)
        ]
    shown = tuple(f"{kind}:{item_id}" for kind, item_id in incoming.items)
    return [
        Event(
            incoming.event_type,
            kind,
            item_id,
            metadata,
            incoming.occurred_at,
            impression=shown[:MAX_IMPRESSION_IDS] if position == 0 else (),
            stream=position == 0,
        )
        for position, (kind, item_id) in enumerate(incoming.items)
    ]


def ingest(
    engine: PersonalizationEngine,
    raw_events: list,
    received_at: datetime,
    retention_days: int,
    skip_reason: str | None = None,
) -> dict[str, Any]:
    """Record what is new and relevant; count and explain the rest.

    Everything accepted is committed (events and their de-duplication keys in one
    transaction) before this returns; a database failure raises and stores nothing.
    """
    if skip_reason:
        errors = [{"index": i, "reason": skip_reason} for i in range(len(raw_events))]
        return summary(0, errors, 0)
    errors: list[dict] = []
    readable: list[IncomingEvent] = []
    oldest = received_at - timedelta(days=retention_days)
    for index, raw in enumerate(raw_events):
        try:
            event = read_event(index, raw, engine.weights, received_at)
            if event.occurred_at < oldest:
                raise SkipEvent(
                    f"event is older than the {retention_days}-day retention"
                )
            if event.occurred_at > received_at + FUTURE_TOLERANCE:
                raise SkipEvent("event time is more than a day in the future")
            readable.append(event)
        except SkipEvent as reason:
            errors.append({"index": index, "reason": str(reason)})
    resolve_items(readable)
    relevant = []
    for event in readable:
        if event.items:
            relevant.append(event)
        else:
            refs = ", ".join(event.item_refs)
            errors.append({"index": event.index, "reason": f"no catalog item {refs!r}"})
    resolve_visitors(relevant, engine)
    fresh_keys = new_keys(sorted({e.dedup_key for e in relevant}), received_at)
    entries, duplicates = [], 0
    for event in relevant:
        if event.dedup_key in fresh_keys:
            fresh_keys.discard(event.dedup_key)  # a repeat within the batch
            entries += [
                VisitorEvent(event.visitor, event.session_id, site_event)
                for site_event in to_events(event)
            ]
        else:
            duplicates += 1
    processed = len(relevant) - duplicates
    engine.record_visitor_events(entries, now=received_at)
    db.session.commit()  # the keys, even when every event was a duplicate
    return summary(processed, sorted(errors, key=lambda e: e["index"]), duplicates)


def summary(processed: int, errors: list[dict], duplicates: int) -> dict[str, Any]:
    return {
        "message": "Webhook successfully processed",
        "processed": processed,
        "skipped": len(errors),
        "duplicates": duplicates,
        "errors": errors,
    }


def expired_keys(now: datetime):
    """Select de-duplication keys older than DEDUP_DAYS (for the retention cleanup)."""
    cutoff = now - timedelta(days=DEDUP_DAYS)
    return (
        select(WebhookEventKey.key_hash)
        .where(WebhookEventKey.received_at < cutoff)
        .order_by(WebhookEventKey.key_hash)
    )
