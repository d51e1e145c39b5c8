"""Folding what requests logged into what rankings read: requests append what
changes a statistic to the inbox (pending_interactions, one insert); the
aggregator reads inbox rows in arrival order, updates affinities, popularity and
co-visitation set-based (one upsert per table per batch), moves the rows into the
log (user_interactions, one INSERT ... SELECT) and deletes them from the inbox,
all in one transaction under one lock.

So each row counts exactly once, whichever worker or command drains it, and a
row that is in the inbox (a 202 was answered) is counted even if the worker that
stored it died right after: the next drain finds it still there.
"""

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import ARRAY, Integer, and_, any_, cast, delete, exists, select

from models import (
    PendingInteraction,
    UserInteraction,
    as_utc,
    is_postgres,
    lock_for_writing,
)
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

# The inbox columns a drain reads, in the order as_entry unpacks them.
ENTRY_COLUMNS = (
    "id",
    "user_id",
    "session_id",
    "interaction_type",
    "target_type",
    "target_id",
    "extra_data",
    "timestamp",
)


def has_effect(interaction: Interaction) -> bool:
    """Whether an interaction changes a statistic: one naming an item, or a
    search (its results' categories). A bare page view changes none, so it goes
    to the log directly and never waits for the aggregator."""
    return interaction.item is not None or interaction.type == "search"


class Aggregation:
    """Drains the inbox into the log and the statistics; never commits (the
    facade does, one transaction per batch)."""

    def __init__(
        self,
        session,
        settings: Settings,
        profiles: Profiles,
        statistics: tuple[Affinity, Popularity, CoVisitation],
        category_shares: Callable[[list[VisitorInteraction]], list[dict[int, float]]],
        erased_among: Callable[[set[str]], set[str]],
        clock: Callable[[], datetime],
    ):
        self.session = session
        self.settings = settings
        self.profiles = profiles
        self.affinity, self.popularity, self.covisitation = statistics
        # For each interaction, the categories it counts for (Ingest's).
        self.category_shares = category_shares
        # Which of some visitors were erased lately (Privacy's).
        self.erased_among = erased_among
        self.clock = clock

    def lock(self) -> None:
        """Wait for any other drain, rebuild or erasure, and hold them off until
        this transaction ends."""
        lock_for_writing(self.session, [LOCK])

    def drain_batch(self, visitor_id: str | None = None) -> int:
        """Aggregate the oldest inbox rows, at most AGGREGATION_BATCH of them, in
        the caller's transaction; say how many it took from the inbox (those of
        erased visitors are dropped, not aggregated).

        With `visitor_id`, only that visitor's: what their next page needs
        (read your writes) costs their few rows, not everyone's. Every count a
        row adds to depends on its own visitor's rows alone (their affinities,
        first times, pairs), so draining one visitor ahead of the rest counts
        the same.
        """
        inbox = PendingInteraction.__table__
        theirs = [inbox.c.user_id == visitor_id] if visitor_id else []
        if not self.session.scalar(select(exists().where(*theirs).select_from(inbox))):
            return 0  # nothing waits: no lock (on SQLite, the write lock)
        self.lock()
        rows = self.session.execute(
            select(*(inbox.c[name] for name in ENTRY_COLUMNS))
            .where(*theirs)
            .order_by(inbox.c.id)
            .limit(self.settings.aggregation_batch)
        ).all()
        if not rows:
            return 0
        taken = len(rows)
        rows = self.without_erased(inbox, rows)
        if not rows:
            return taken
        entries = [as_entry(row) for row in rows]
        # Each row counts as much as its age allows (weight x decay^days) as of
        # now; a row stamped later than the clock (a caller's own `now`) is
        # aggregated as of its own time, as it would have been when logged.
        newest = max(entry.interaction.occurred_at for entry in entries)
        # First-time checks read the log: before the batch is in it.
        self.fold_in(entries, max(self.clock(), newest))
        ids = [row.id for row in rows]
        self.move_to_log(inbox, and_(self.batch_rows(inbox, ids), *theirs))
        return taken

    def without_erased(self, inbox, rows: list) -> list:
        """Drop, from the inbox and the batch, rows of visitors erased since a
        request began storing them (it committed after the erasure)."""
        erased = self.erased_among({row.user_id for row in rows})
        if not erased:
            return rows
        self.session.execute(delete(inbox).where(inbox.c.user_id.in_(sorted(erased))))
        return [row for row in rows if row.user_id not in erased]

    def move_to_log(self, inbox, batch) -> None:
        """Append the inbox rows `batch` selects to the log, in arrival order,
        and drop them from the inbox: two set-based statements."""
        log = UserInteraction.__table__
        columns = [c.name for c in log.c if c.name != "id"]
        self.session.execute(
            log.insert().from_select(
                columns,
                select(*(inbox.c[name] for name in columns))
                .where(batch)
                .order_by(inbox.c.id),
            )
        )
        self.session.execute(delete(inbox).where(batch))

    def batch_rows(self, inbox, ids: list[int]):
        """A filter for exactly the batch's inbox rows (`ids`, ascending) with one
        parameter or two: an IN list of thousands of values cost more to compile
        and parse than the move itself.

        PostgreSQL: the ids as one array. SQLite: their range, which holds no
        other row of the rows read (all, or one visitor's), since the batch is
        the oldest of them in id order, read under the write lock this
        transaction holds (no row can arrive in between). On PostgreSQL rows do
        commit out of id order, so the range would not do.
        """
        if is_postgres(self.session):
            return inbox.c.id == any_(cast(ids, ARRAY(Integer)))
        return inbox.c.id.between(ids[0], ids[-1])

    def fold_in(self, entries: list[VisitorInteraction], now: datetime) -> None:
        """Add interactions to affinities, popularity and co-visitation.

        Whether this is a visitor's first time with an item (distinct-visitor
        counts, co-visitation) is read from the log (what was aggregated
        before), within the popularity window, which is what a rebuild counts
        visitors over.
        """
        with_items = {e.visitor_id for e in entries if e.interaction.item}
        seen = self.profiles.items_seen(
            with_items, now, self.settings.popularity_window_days
        )
        seen_categories = self.affinity.categories_of(with_items)
        shares = self.category_shares(entries)
        self.affinity.add(entries, shares, now)
        self.popularity.add(entries, shares, seen, seen_categories, now)
        self.covisitation.add(entries, seen)


def as_entry(row) -> VisitorInteraction:
    """An inbox row as the interaction it records, at the time it happened (in
    UTC, made aware once here rather than at each of the sums that age it).

    Unpacked by position: reading a Row's fields by name cost more than the
    rest of this function, for thousands of rows a batch."""
    _, visitor_id, session_id, kind, target_type, target_id, extra, when = row
    item = ItemKey(target_type, target_id) if target_id else None
    interaction = Interaction(kind, item, decode_metadata(extra), as_utc(when))
    return VisitorInteraction(visitor_id, session_id, interaction)
