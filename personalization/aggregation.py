"""Folding the interaction log into what rankings read: requests only append
to the log (and list what changes a statistic in pending_interactions); the
aggregator reads pending rows in log order, updates affinities, popularity and
co-visitation set-based (one upsert per table per batch), and deletes them from
the pending list, all in one transaction under one lock.

So each row counts exactly once, whichever worker or command drains it, and a
row that is in the log (a 202 was answered) is counted even if the worker that
stored it died right after: the next drain finds it still pending.
"""

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import delete, exists, select

from models import PendingInteraction, UserInteraction, as_utc, lock_for_writing
from personalization.events import (
    Interaction,
    ItemKey,
    VisitorInteraction,
    decode_metadata,
)
from personalization.profiles import Profiles
from personalization.settings import Settings
from personalization.statistics import Affinity, CoVisitation, Popularity

# The lock every drain, statistics rebuild and erasure holds: they never
# interleave, so no row is counted twice, or after its visitor was forgotten.
LOCK = "aggregation"


def has_effect(interaction: Interaction) -> bool:
    """Whether an interaction changes a statistic: one naming an item, or a
    search (its results' categories). A bare page view changes none, so it is
    stored already aggregated and costs the aggregator nothing."""
    return interaction.item is not None or interaction.type == "search"


class Aggregation:
    """Drains pending log rows into the statistics; never commits (the facade
    does, one transaction per batch)."""

    def __init__(
        self,
        session,
        settings: Settings,
        profiles: Profiles,
        statistics: tuple[Affinity, Popularity, CoVisitation],
        category_shares: Callable[[list[VisitorInteraction]], list[dict[int, float]]],
        clock: Callable[[], datetime],
    ):
        self.session = session
        self.settings = settings
        self.profiles = profiles
        self.affinity, self.popularity, self.covisitation = statistics
        # For each interaction, the categories it counts for (Ingest's).
        self.category_shares = category_shares
        self.clock = clock

    def lock(self) -> None:
        """Wait for any other drain, rebuild or erasure, and hold them off until
        this transaction ends."""
        lock_for_writing(self.session, [LOCK])

    def pending_for(self, visitor_id: str) -> bool:
        """Whether the visitor has rows still to aggregate (their own click not
        yet in their category affinities). One lookup in a small index."""
        pending = PendingInteraction.__table__
        return bool(
            self.session.scalar(select(exists().where(pending.c.user_id == visitor_id)))
        )

    def drain_batch(self) -> int:
        """Aggregate the oldest pending rows, at most AGGREGATION_BATCH of them,
        in the caller's transaction; say how many."""
        pending = PendingInteraction.__table__
        if not self.session.scalar(select(exists().select_from(pending))):
            return 0  # nothing waits: no lock (on SQLite, the write lock)
        self.lock()
        log = UserInteraction.__table__
        rows = self.session.execute(
            select(
                log.c.id,
                log.c.user_id,
                log.c.session_id,
                log.c.interaction_type,
                log.c.target_type,
                log.c.target_id,
                log.c.extra_data,
                log.c.timestamp,
            )
            .join(pending, pending.c.interaction_id == log.c.id)
            .order_by(pending.c.interaction_id)
            .limit(self.settings.aggregation_batch)
        ).all()
        if not rows:
            return 0
        entries = [as_entry(row) for row in rows]
        # Each row counts as much as its age allows (weight x decay^days) as of
        # now; a row stamped later than the clock (a caller's own `now`) is
        # aggregated as of its own time, as it would have been when logged.
        newest = max(as_utc(row.timestamp) for row in rows)
        self.fold_in(entries, max(self.clock(), newest))
        self.session.execute(
            delete(pending).where(
                pending.c.interaction_id.in_([row.id for row in rows])
            )
        )
        return len(rows)

    def fold_in(self, entries: list[VisitorInteraction], now: datetime) -> None:
        """Add interactions to affinities, popularity and co-visitation.

        Whether this is a visitor's first time with an item (distinct-visitor
        counts, co-visitation) is read from what was aggregated before, within
        the popularity window, which is what a rebuild counts visitors over.
        """
        with_items = {e.visitor_id for e in entries if e.interaction.item}
        histories = self.profiles.histories(
            with_items,
            now,
            self.settings.popularity_window_days,
            aggregated_only=True,
        )
        seen = {
            visitor: {entry.item for entry in history}
            for visitor, history in histories.items()
        }
        seen_categories = self.affinity.categories_of(with_items)
        shares = self.category_shares(entries)
        self.affinity.add(entries, shares, now)
        self.popularity.add(entries, shares, seen, seen_categories, now)
        self.covisitation.add(entries, seen)


def as_entry(row) -> VisitorInteraction:
    """A log row as the interaction it records, at the time it happened."""
    item = ItemKey(row.target_type, row.target_id) if row.target_id else None
    interaction = Interaction(
        row.interaction_type, item, decode_metadata(row.extra_data), row.timestamp
    )
    return VisitorInteraction(row.user_id, row.session_id, interaction)
