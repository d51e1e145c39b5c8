"""The Personalize outbox: interactions queued in the same transaction as the log,
then delivered with PutEvents, claimed so two workers never send one twice, and
marked sent only once AWS accepted them, so an outage loses nothing. "Forget me"
queues a visitor's deletion the same way (a data deletion job)."""

import json
import secrets
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, insert, select, update

from models import PersonalizeOutbox, as_utc
from personalization.events import VisitorInteraction
from personalization.export import shown_lists
from personalization.settings import Settings
from personalize_client import (
    MAX_EVENTS_PER_CALL,
    PersonalizeClient,
    PersonalizeUnavailable,
    impression_ids,
    personalize_event,
    personalize_event_type,
)

# An event Personalize refused this many times is left out (a dead letter).
# Deletions never are: they are retried until a job is accepted.
MAX_ATTEMPTS = 10
# The event_type of an outbox row that asks Personalize to delete its user_id.
DELETE_USER = "delete_user"
# A claim older than this belongs to a sync that died; others may take the rows.
CLAIM_TIMEOUT = timedelta(minutes=5)


@dataclass(frozen=True)
class Backlog:
    """What waits in the outbox: events still to deliver, the oldest one's time,
    and dead letters."""

    pending: int
    dead_letters: int
    oldest_pending: datetime | None


@dataclass(frozen=True)
class Delivery:
    """Up to 10 events of one visitor session: one PutEvents call."""

    visitor_id: str
    session_id: str
    ids: list[int]
    events: list[dict]


class Outbox:
    """Queues and hands out events for Personalize; never commits (the facade does,
    after each delivery, so what AWS accepted stays marked)."""

    def __init__(self, session, settings: Settings):
        self.session = session
        self.settings = settings
        self.table = PersonalizeOutbox.__table__

    def queue(self, entries: list[VisitorInteraction], now: datetime) -> None:
        """Queue interactions with catalog items for streaming to Personalize.

        Only those Personalize is given (personalize_event_type). The impression
        is what the event lists (Amplitude's items_shown) or, for an event on a
        card, the list the visitor was shown it in (its list_id).
        """
        weight = self.settings.weight
        streamed = [
            entry
            for entry in entries
            if entry.interaction.item
            and entry.interaction.stream
            and personalize_event_type(
                entry.interaction.type, weight(entry.interaction.type)
            )
        ]
        lists = shown_lists(
            self.session, {list_id_of(entry.interaction.metadata) for entry in streamed}
        )
        rows = []
        for entry in streamed:
            interaction = entry.interaction
            shown = [str(item) for item in interaction.impression]
            owner, items = lists.get(list_id_of(interaction.metadata), (None, []))
            if not shown and owner == entry.visitor_id:
                shown = items
            rows.append(
                {
                    "user_id": entry.visitor_id,
                    "session_id": entry.session_id,
                    "event_type": interaction.type,
                    "item_id": str(interaction.item),
                    "event_value": weight(interaction.type),
                    "impression": json.dumps(impression_ids(shown)) if shown else None,
                    "occurred_at": interaction.occurred_at or now,
                }
            )
        if rows:
            self.session.execute(insert(PersonalizeOutbox), rows)

    def queue_deletion(self, visitor_id: str, now: datetime) -> None:
        """Queue a visitor's erasure from Personalize (a data deletion job)."""
        self.session.execute(
            insert(PersonalizeOutbox).values(
                user_id=visitor_id,
                session_id="",
                event_type=DELETE_USER,
                item_id="",
                event_value=0.0,
                occurred_at=now,
            )
        )

    def claim(self, max_events: int, now: datetime) -> str:
        """Claim the oldest deliverable events with a fresh token; return it."""
        outbox = self.table
        token = secrets.token_hex(16)
        claimable = (
            outbox.c.sent_at.is_(None)
            & (
                (outbox.c.attempts < MAX_ATTEMPTS)
                | (outbox.c.event_type == DELETE_USER)
            )
            & (
                outbox.c.claimed_at.is_(None)
                | (outbox.c.claimed_at < now - CLAIM_TIMEOUT)
            )
        )
        oldest = select(outbox.c.id).where(claimable).order_by(outbox.c.id)
        self.session.execute(
            update(outbox)
            .where(outbox.c.id.in_(oldest.limit(max_events)), claimable)
            .values(claim_token=token, claimed_at=now)
        )
        return token

    def deliveries(self, token: str) -> Iterator[Delivery]:
        """The claimed events, grouped by visitor session, oldest first, in calls of
        at most 10 (PutEvents' limit)."""
        outbox = self.table
        rows = self.session.execute(
            select(outbox)
            .where(outbox.c.claim_token == token, outbox.c.event_type != DELETE_USER)
            .order_by(outbox.c.id)
        ).all()
        sessions: dict[tuple[str, str], list] = defaultdict(list)
        unsendable = []  # queued before a weight or the mapping changed
        for row in rows:
            if personalize_event_type(row.event_type, row.event_value):
                sessions[(row.user_id, row.session_id)].append(row)
            else:
                unsendable.append(row.id)
        if unsendable:
            yield Delivery("", "", unsendable, [])
        for (visitor_id, session_id), session_rows in sessions.items():
            for start in range(0, len(session_rows), MAX_EVENTS_PER_CALL):
                chunk = session_rows[start : start + MAX_EVENTS_PER_CALL]
                yield Delivery(
                    visitor_id,
                    session_id,
                    [row.id for row in chunk],
                    [
                        personalize_event(
                            str(row.id),
                            personalize_event_type(row.event_type, row.event_value),
                            row.item_id,
                            row.event_value,
                            as_utc(row.occurred_at),
                            impression=json.loads(row.impression)
                            if row.impression
                            else None,
                        )
                        for row in chunk
                    ],
                )

    def deletions(self, token: str) -> list[tuple[int, str]]:
        """The claimed deletions: (row id, visitor id), oldest first."""
        outbox = self.table
        return [
            (row_id, user_id)
            for row_id, user_id in self.session.execute(
                select(outbox.c.id, outbox.c.user_id)
                .where(
                    outbox.c.claim_token == token, outbox.c.event_type == DELETE_USER
                )
                .order_by(outbox.c.id)
            )
        ]

    def mark_sent(self, ids: list[int], now: datetime) -> None:
        self.session.execute(
            update(self.table).where(self.table.c.id.in_(ids)).values(sent_at=now)
        )

    def mark_failed(self, ids: list[int]) -> None:
        self.session.execute(
            update(self.table)
            .where(self.table.c.id.in_(ids))
            .values(attempts=self.table.c.attempts + 1)
        )

    def delete_users(
        self,
        client: PersonalizeClient,
        token: str,
        now: datetime,
        committed: Callable[[], AbstractContextManager],
        clock: Callable[[], datetime],
    ) -> tuple[int, int]:
        """Start one data deletion job for every claimed deletion; return how
        many visitors it names and whether it failed (0 or 1)."""
        claimed = self.deletions(token) if client.deletion else []
        if not claimed:
            return 0, 0
        ids = [row_id for row_id, _ in claimed]
        job_name = f"antidote-forget-{now:%Y%m%d%H%M%S}-{token[:8]}"
        try:
            client.delete_users(sorted({user for _, user in claimed}), job_name)
        except PersonalizeUnavailable:
            with committed():
                self.mark_failed(ids)
            return 0, 1
        with committed():
            self.mark_sent(ids, clock())
        return len(claimed), 0

    def deliver(
        self,
        client: PersonalizeClient,
        max_events: int,
        now: datetime,
        committed: Callable[[], AbstractContextManager],
        clock: Callable[[], datetime],
    ) -> dict[str, int]:
        """Stream queued interactions to Personalize (PutEvents), oldest first.

        Each step runs in its own `committed()` block (the facade's transaction):
        an accepted call is marked sent in its own commit, so an outage loses
        nothing and a later run does not resend it; only a crash between AWS's
        answer and that commit sends one call twice (at least once, never lost).
        The first refusal stops the run; the rest stays queued for the next.
        Then the deletions it claimed go as one data deletion job (delete_users).
        """
        with committed():
            token = self.claim(max_events, now)
        sent = failed = 0
        for delivery in self.deliveries(token):
            if not delivery.events:  # nothing Personalize is given: done
                with committed():
                    self.mark_sent(delivery.ids, clock())
                continue
            try:
                client.put_events(
                    delivery.visitor_id, delivery.session_id, delivery.events
                )
            except PersonalizeUnavailable:
                with committed():
                    self.mark_failed(delivery.ids)
                failed = 1
                break
            with committed():
                self.mark_sent(delivery.ids, clock())
            sent += len(delivery.ids)
        deleted, deletion_failed = self.delete_users(
            client, token, now, committed, clock
        )
        with committed():
            self.release(token)
        return {
            "sent": sent,
            "pending": self.pending(),
            "failed": failed or deletion_failed,
            "deleted": deleted,
        }

    def release(self, token: str) -> None:
        """Give back what a run claimed but did not send, for the next run."""
        self.session.execute(
            update(self.table)
            .where(self.table.c.claim_token == token, self.table.c.sent_at.is_(None))
            .values(claim_token=None, claimed_at=None)
        )

    def pending(self) -> int:
        return self.session.scalar(
            select(func.count()).where(self.table.c.sent_at.is_(None))
        )

    def backlog(self) -> "Backlog":
        """Unsent events, in one query: those still to deliver (and since when),
        and dead letters (refused MAX_ATTEMPTS times, never tried again)."""
        dead = (self.table.c.attempts >= MAX_ATTEMPTS) & (
            self.table.c.event_type != DELETE_USER
        )
        unsent, dead_letters, oldest = self.session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(case((dead, 1), else_=0)), 0),
                func.min(case((~dead, self.table.c.occurred_at))),
            ).where(self.table.c.sent_at.is_(None))
        ).one()
        return Backlog(unsent - dead_letters, dead_letters, oldest)


def list_id_of(metadata: dict | None) -> str | None:
    """The recommendation list an event's card came from, if it names one."""
    list_id = (metadata or {}).get("list_id")
    return list_id if isinstance(list_id, str) else None
