"""The one path every interaction takes into the engine, whatever its source (the
tracker, server-side page views, webhooks): checked against the catalog, and
appended to the log and the Personalize outbox in the caller's transaction; the
aggregator (aggregation.py) folds it into the statistics soon after."""

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert

from models import (
    PendingInteraction,
    UserInteraction,
    WebhookEventKey,
    dialect_insert,
)
from personalization import telemetry
from personalization.aggregation import has_effect
from personalization.events import (
    IMPRESSION_TYPES,
    EventError,
    ExternalEvent,
    Interaction,
    ItemKey,
    VisitorInteraction,
    encode_metadata,
    parse_event,
)
from personalization.identity import Identity
from personalization.items import Items, split_evenly
from personalization.outbox import Outbox
from personalization.settings import Settings

# The tracker's events, as metrics label their source (a webhook's carry their own).
TRACKER = "tracker"
# What became of a webhook event, for metrics: this, or why it was refused.
ACCEPTED = "accepted"


@dataclass
class ExternalResult:
    """What became of a webhook's events."""

    processed: int = 0
    duplicates: int = 0
    # {"index": n, "reason": "..."} for each event that names no catalog item.
    errors: list[dict[str, Any]] = field(default_factory=list)
    # {(source, reason): events} refused here: unknown_item, duplicate.
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)


class Ingest:
    """Validates and records interactions; never commits (the facade does)."""

    def __init__(
        self,
        session,
        settings: Settings,
        identity: Identity,
        items: Items,
        outbox: Outbox | None,
        search_categories: Callable[[str], list[int]],
        clock: Callable[[], datetime],
    ):
        self.session = session
        self.settings = settings
        self.identity = identity
        self.items = items
        self.outbox = outbox
        # The categories of a search's results, best first (catalog search).
        self.search_categories = search_categories
        self.clock = clock

    def validate(
        self, raw_events: list
    ) -> tuple[list[Interaction], list[dict[str, Any]]]:
        """Split tracker events into valid ones and rejections with their index and
        reason. Items are checked against the catalog with one query per kind."""
        parsed: list[tuple[int, Interaction]] = []
        rejected: list[dict[str, Any]] = []
        for index, raw in enumerate(raw_events):
            try:
                parsed.append((index, parse_event(raw)))
            except EventError as error:
                rejected.append(
                    {"index": index, "error": str(error), "reason": error.reason}
                )
        known = self.items.existing(i.item for _, i in parsed if i.item)
        valid = []
        for index, interaction in parsed:
            item = interaction.item
            if item and item not in known:
                rejected.append(
                    {
                        "index": index,
                        "error": f"no {item.kind} with id {item.id}",
                        "reason": "unknown_item",
                    }
                )
            else:
                valid.append(interaction)
        rejected.sort(key=lambda r: r["index"])
        telemetry.accepted(TRACKER, len(valid))
        return valid, rejected

    def record(
        self, entries: list[VisitorInteraction], now: datetime | None = None
    ) -> int:
        """Append validated interactions of any visitors: one insert per table.

        Those that change a statistic go to the inbox (pending_interactions),
        which the aggregator moves into the log and folds into affinities,
        popularity and co-visitation soon after (see aggregation.py), so a
        request never waits for that; bare page views go to the log. The
        outbox changes in the caller's transaction, with them.
        """
        if not entries:
            return 0
        now = now or self.clock()
        waiting, logged = [], []
        for entry in entries:
            row = log_row(entry, now)
            (waiting if has_effect(entry.interaction) else logged).append(row)
        for table, rows in ((PendingInteraction, waiting), (UserInteraction, logged)):
            if rows:  # the table, not the class: Core skips the ORM's bulk path
                self.session.execute(insert(table.__table__), rows)
        if self.outbox:
            self.outbox.queue(entries, now)
        return len(entries)

    def category_shares(
        self, entries: list[VisitorInteraction]
    ) -> list[dict[int, float]]:
        """For each interaction, the categories it counts for, summing to 1: its
        item's (see Items.category_shares), or a search's top results'."""
        of_item = self.items.category_shares(
            e.interaction.item for e in entries if e.interaction.item
        )
        counted = self.settings.search_results_counted
        shares = []
        for entry in entries:
            interaction = entry.interaction
            if interaction.type == "search":
                query = interaction.metadata["query"]
                shares.append(
                    split_evenly(1.0, self.search_categories(query)[:counted])
                )
            else:
                shares.append(of_item.get(interaction.item, {}))
        return shares

    # Events from other systems

    def record_external(
        self, events: list[ExternalEvent], received_at: datetime
    ) -> ExternalResult:
        """Resolve webhook events to catalog items and visitors, drop what was
        delivered before, and record the rest."""
        result = ExternalResult()
        outcomes: Counter[tuple[str, str]] = Counter()  # (source, outcome): events
        resolved = self.items.resolve(ref for e in events for ref in e.item_refs)
        relevant: list[tuple[ExternalEvent, list[ItemKey]]] = []
        for event in events:
            keys = [resolved[ref] for ref in event.item_refs if ref in resolved]
            if keys:
                relevant.append((event, keys))
            else:
                refs = ", ".join(event.item_refs)
                result.errors.append(
                    {
                        "index": event.index,
                        "reason": f"no catalog item {refs!r}",
                        "code": "unknown_item",
                    }
                )
                outcomes[event.source, "unknown_item"] += 1
        visitors = self.visitors_of([event for event, _ in relevant])
        fresh = self.new_keys(sorted({e.dedup_key for e, _ in relevant}), received_at)
        entries = []
        for event, keys in relevant:
            if event.dedup_key not in fresh:
                result.duplicates += 1
                outcomes[event.source, "duplicate"] += 1
                continue
            fresh.discard(event.dedup_key)  # a repeat within the batch
            result.processed += 1
            outcomes[event.source, ACCEPTED] += 1
            entries += [
                VisitorInteraction(visitors[event.index], event.session_id, interaction)
                for interaction in external_interactions(event, keys)
            ]
        self.record(entries, now=received_at)
        for (source, outcome), count in outcomes.items():
            if outcome == ACCEPTED:
                telemetry.accepted(source, count)
            else:
                result.refused[source, outcome] += count
        return result

    def visitors_of(self, events: list[ExternalEvent]) -> dict[int, str]:
        """Each event's visitor: the site visitor whose signed alias the page handed
        the other system, else that system's user id, else its device id, keyed.

        An alias the site did not sign (a guessed or made-up visitor id) names
        nobody: the event falls back to the other system's own ids.
        """
        visitors = {}
        for event in events:
            site_visitor = (
                self.identity.visitor_of_alias(event.visitor_hint)
                if event.visitor_hint
                else None
            )
            if site_visitor:
                visitors[event.index] = site_visitor
            elif event.user_id:
                visitors[event.index] = self.identity.external_id(
                    f"{event.source}-user", event.user_id
                )
            else:
                device = event.device_id or event.visitor_hint or ""
                visitors[event.index] = self.identity.external_id(
                    f"{event.source}-device", device
                )
        return visitors

    def new_keys(self, keys: list[str], received_at: datetime) -> set[str]:
        """Store de-duplication keys; return those not seen before.

        ON CONFLICT DO NOTHING: a retried delivery, even one racing the first, finds
        its key taken. Stored in the caller's transaction, with the events.
        """
        if not keys:
            return set()
        table = WebhookEventKey.__table__
        # Parameters apart from the statement: it compiles once, not per batch
        # (SQLAlchemy still sends one multi-row INSERT per 1,000 keys).
        statement = (
            dialect_insert(self.session, table)
            .on_conflict_do_nothing(index_elements=[table.c.key_hash])
            .returning(table.c.key_hash)
        )
        return set(
            self.session.scalars(
                statement,
                [{"key_hash": key, "received_at": received_at} for key in keys],
            )
        )


def log_row(entry: VisitorInteraction, now: datetime) -> dict:
    """An interaction as a row of the log (user_interactions)."""
    interaction = entry.interaction
    item = interaction.item
    return {
        "user_id": entry.visitor_id,
        "session_id": entry.session_id,
        "interaction_type": interaction.type,
        "target_type": item.kind if item else "page",
        "target_id": item.id if item else None,
        "extra_data": encode_metadata(interaction.metadata)
        if interaction.metadata
        else None,
        "timestamp": interaction.occurred_at or now,
    }


def external_interactions(
    event: ExternalEvent, items: Iterable[ItemKey]
) -> list[Interaction]:
    """One interaction per item; an impression's first one carries the whole list
    for Personalize, and the others are not streamed on their own."""
    metadata = {"source": event.source}
    items = list(items)
    if event.type not in IMPRESSION_TYPES:
        return [Interaction(event.type, items[0], metadata, event.occurred_at)]
    return [
        Interaction(
            event.type,
            item,
            metadata,
            event.occurred_at,
            impression=tuple(items) if position == 0 else (),
            stream=position == 0,
        )
        for position, item in enumerate(items)
    ]
