"""What the rankings know about one visitor: their decayed category affinities and
their recent distinct items, read by visitor id through indexes, never a log scan."""

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from cachetools import TTLCache
from sqlalchemy import DateTime, Integer, bindparam, exists, func, select, union_all

from models import (
    PendingInteraction,
    UserCategoryAffinity,
    UserInteraction,
    VisitorPreference,
)
from personalization.events import ITEM_KINDS, ItemKey
from personalization.preferences import Preferences
from personalization.settings import Settings
from personalization.statistics import Affinity, sql_weight

# Visitors whose histories one statement reads. Statements are built for 1, 2, 4,
# ... up to this many visitors (a batch is padded with an id no visitor has), so a
# handful serve every batch size; and SQLite refuses a UNION of over 500 parts.
HISTORY_BATCH = 128
NO_VISITOR = ""


@dataclass(frozen=True)
class HistoryItem:
    """An item in a visitor's recent history, with their net weight on it
    (negative: they hid it or said "not interested")."""

    item: ItemKey
    net_weight: float


@dataclass(frozen=True)
class VisitorProfile:
    """One visitor as every recommender sees them, read once per page."""

    # None for a visitor who may not be tracked: they get popular lists.
    visitor_id: str | None
    affinities: dict[int, float] = field(default_factory=dict)
    # Recent distinct items, newest first.
    recent: list[ItemKey] = field(default_factory=list)
    # Items whose signals are net negative: demoted to the end of their lists.
    disliked: frozenset[ItemKey] = frozenset()
    # The visitor's own net positive weight on each recent item.
    interest: dict[ItemKey, float] = field(default_factory=dict)
    # The city they chose to see doctors in: a regional signal.
    city: str | None = None
    # With REPEAT_CONSUMPTION: how likely they come back to each procedure they
    # had (see Profiles.returns).
    returns: dict[int, float] = field(default_factory=dict)
    # Scores a recommender worked out for this visitor, kept for the rest of the
    # page: its procedure and doctor sections share one blend.
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_history(
        cls,
        visitor_id: str,
        affinities: dict[int, float],
        history: list[HistoryItem],
        city: str | None = None,
    ) -> "VisitorProfile":
        return cls(
            visitor_id,
            affinities,
            [entry.item for entry in history],
            frozenset(entry.item for entry in history if entry.net_weight < 0),
            {entry.item: entry.net_weight for entry in history if entry.net_weight > 0},
            city,
        )

    def disliked_of(self, kind: str) -> set[ItemKey]:
        return {item for item in self.disliked if item.kind == kind}


@dataclass(frozen=True)
class ProfileState:
    """What a visitor's profile follows: the newest of the logged item
    interactions their history reads (any new click, view or "not interested"
    changes it; an erasure clears it), when their category affinities last
    changed (a search changes them, naming no item), whether some of their
    interactions are still to be aggregated, and the city they chose."""

    latest: int | None
    affinities_changed: datetime | None
    pending: bool
    city: str | None


def state_statement():
    """What Profiles.state reads, for the visitor in the `visitor` parameter:
    built once, as composing it cost more than running it."""
    log = UserInteraction.__table__
    visitor = bindparam("visitor")
    # The newest of the rows histories read (the visitor's latest `rows` item
    # interactions), so any row that changes their history changes it. Read
    # through the item history index: a plain max(id) of their item rows had
    # SQLite scan the visitor's page views too (5 ms at 4,000 of them).
    recent_items = (
        select(log.c.id)
        .where(
            log.c.user_id == visitor,
            log.c.target_id.is_not(None),
            log.c.target_type.in_(ITEM_KINDS),
        )
        .order_by(log.c.timestamp.desc())
        .limit(bindparam("rows", type_=Integer))
        .subquery()
    )
    latest = select(func.max(recent_items.c.id)).scalar_subquery()
    # A visitor has a row per category they showed interest in: a few.
    affinities_changed = (
        select(func.max(UserCategoryAffinity.last_updated))
        .where(UserCategoryAffinity.user_id == visitor)
        .scalar_subquery()
    )
    pending = exists().where(PendingInteraction.user_id == visitor)
    city = (
        select(VisitorPreference.city)
        .where(VisitorPreference.user_id == visitor)
        .scalar_subquery()
    )
    return select(latest, affinities_changed, pending, city)


STATE = state_statement()


def anonymous() -> VisitorProfile:
    """A visitor nothing is known about (GPC, opt-out, or a first request)."""
    return VisitorProfile(None)


class Profiles:
    """Reads visitor profiles and histories."""

    def __init__(
        self,
        session,
        settings: Settings,
        affinity: Affinity,
        preferences: Preferences,
        clock: Callable[[], datetime],
    ):
        self.session = session
        self.settings = settings
        self.affinity = affinity
        self.preferences = preferences
        self.clock = clock
        # Built once per kind and batch size (a power of two): see _per_visitor.
        self._statements: dict[tuple[str, int], object] = {}
        # Profiles by their ProfileState (all of it but `pending`): a profile,
        # with the rankings memoized in it, serves the visitor's pages until they
        # do something new, for at most POPULARITY_CACHE_SECONDS (popular lists
        # and item neighbours, which rankings also read, live as long).
        self._cache = (
            TTLCache(settings.profile_cache_size, settings.popularity_cache_seconds)
            if settings.profile_cache_size and settings.popularity_cache_seconds
            else None
        )
        # Several threads may serve pages (flask run); TTLCache is not safe then.
        self._cache_lock = threading.Lock()

    def state(self, visitor_id: str) -> ProfileState:
        """The visitor's ProfileState: one round trip, four index lookups."""
        row = self.session.execute(
            STATE, {"visitor": visitor_id, "rows": self.settings.history_rows}
        ).one()
        return ProfileState(row[0], row[1], bool(row[2]), row[3])

    def load(
        self, visitor_id: str | None, state: ProfileState | None = None
    ) -> VisitorProfile:
        """Read what rankings need about a visitor: three indexed queries; none
        when this process holds their profile for the same `state`."""
        if not visitor_id:
            return anonymous()
        key = (
            (visitor_id, state.latest, state.affinities_changed, state.city)
            if state
            else None
        )
        if key and self._cache is not None:
            with self._cache_lock:
                cached = self._cache.get(key)
            if cached is not None:
                return cached
        profile = self.read(visitor_id, state)
        if key and self._cache is not None:
            with self._cache_lock:
                self._cache[key] = profile
        return profile

    def read(
        self, visitor_id: str, state: ProfileState | None = None
    ) -> VisitorProfile:
        """A visitor's profile, read from the database (their city from `state`
        when given)."""
        history = self.histories({visitor_id}).get(visitor_id, [])
        profile = VisitorProfile.from_history(
            visitor_id,
            self.affinity.of_visitor(visitor_id),
            history,
            state.city if state else self.preferences.city(visitor_id),
        )
        if self.settings.repeat_consumption:
            return replace(profile, returns=self.returns(visitor_id))
        return profile

    def forget_cached(self, visitor_id: str) -> None:
        """Drop this process's copies of a visitor's profile (an erasure)."""
        if self._cache is None:
            return
        with self._cache_lock:
            for key in [key for key in self._cache if key[0] == visitor_id]:
                self._cache.pop(key, None)

    def returns(self, visitor_id: str) -> dict[int, float]:
        """Each procedure the visitor had, by recency-weighted visits: every
        positive interaction among their last HISTORY_ROWS counts REPEAT_DECAY
        to the power of how many positive ones came after it (the repeat-aware
        reference of the offline evaluation, own history). One indexed query."""
        log = UserInteraction.__table__
        since = self.clock() - timedelta(days=self.settings.history_window_days)
        rows = self.session.execute(
            select(log.c.target_id, log.c.interaction_type)
            .where(
                log.c.user_id == visitor_id,
                log.c.timestamp >= since,
                log.c.target_id.is_not(None),
                log.c.target_type == "procedure",
            )
            .order_by(log.c.timestamp.desc(), log.c.id.desc())
            .limit(self.settings.history_rows)
        )
        decay = self.settings.repeat_decay
        found: dict[int, float] = defaultdict(float)
        steps = 0
        for procedure_id, kind in rows:
            if self.settings.weight(kind) > 0:
                found[procedure_id] += decay**steps
                steps += 1
        return dict(found)

    def histories(
        self,
        visitor_ids: Iterable[str],
        now: datetime | None = None,
        days: int | None = None,
    ) -> dict[str, list[HistoryItem]]:
        """Each visitor's most recent distinct catalog items, newest first, with the
        net weight of what they did to each.

        Reads at most each visitor's last HISTORY_ROWS interactions in the
        history window (or the last `days`), through the (user_id, timestamp)
        index: the cost grows neither with the log nor with one visitor's (or
        bot's) own history.
        """
        found: dict[str, list[HistoryItem]] = defaultdict(list)
        for visitor_id, kind, item_id, net, _ in self._per_visitor(
            self._history_statement, visitor_ids, now, days
        ):
            found[visitor_id].append(HistoryItem(ItemKey(kind, item_id), float(net)))
        return found

    def items_seen(
        self, visitor_ids: Iterable[str], now: datetime, days: int
    ) -> dict[str, set[ItemKey]]:
        """The distinct items among each visitor's last HISTORY_ROWS interactions
        of the last `days`: what the aggregator's first-time checks need, read
        without the weights and recency ranking of histories (a third less time)."""
        found: dict[str, set[ItemKey]] = defaultdict(set)
        for visitor_id, kind, item_id in self._per_visitor(
            self._seen_statement, visitor_ids, now, days
        ):
            found[visitor_id].add(ItemKey(kind, item_id))
        return found

    def _per_visitor(self, statement_for, visitor_ids, now, days):
        """The rows of `statement_for(size)` for these visitors, HISTORY_BATCH
        visitors per statement, each batch padded to a power of two so a few
        statements, built once, serve every batch size."""
        since = (now or self.clock()) - timedelta(
            days=days or self.settings.history_window_days
        )
        visitors = sorted(set(visitor_ids) - {NO_VISITOR})
        for start in range(0, len(visitors), HISTORY_BATCH):
            batch = visitors[start : start + HISTORY_BATCH]
            size = 1 << (len(batch) - 1).bit_length()  # the next power of two
            batch += [NO_VISITOR] * (size - len(batch))
            parameters = {f"visitor_{i}": visitor for i, visitor in enumerate(batch)}
            yield from self.session.execute(
                statement_for(size), {**parameters, "since": since}
            )

    def _latest_rows(self, visitors: int):
        """Each of `visitors` visitors' latest item interactions since `since`
        (parameters visitor_0, visitor_1, ..., since), at most HISTORY_ROWS each,
        from their own index range, newest first."""
        log = UserInteraction.__table__
        since = bindparam("since", type_=DateTime(timezone=True))
        latest = [
            select(
                log.c.user_id,
                log.c.target_type,
                log.c.target_id,
                log.c.interaction_type,
                log.c.timestamp,
            )
            .where(
                log.c.user_id == bindparam(f"visitor_{i}"),
                log.c.timestamp >= since,
                # Spelled out so the item history index (no page views) serves.
                log.c.target_id.is_not(None),
                log.c.target_type.in_(ITEM_KINDS),
            )
            .order_by(log.c.timestamp.desc())
            .limit(self.settings.history_rows)
            .subquery()
            for i in range(visitors)
        ]
        return union_all(*(select(part) for part in latest)).subquery()

    def _history_statement(self, visitors: int):
        """The statement behind histories for `visitors` visitors.

        Built once per visitor count: composing it (a CASE over the weight table)
        cost more than running it, on every page view.
        """
        key = ("history", visitors)
        if key in self._statements:
            return self._statements[key]
        rows = self._latest_rows(visitors)
        last_seen = func.max(rows.c.timestamp)
        per_item = (
            select(
                rows.c.user_id,
                rows.c.target_type,
                rows.c.target_id,
                func.sum(
                    sql_weight(
                        self.settings.interaction_weights, rows.c.interaction_type
                    )
                ).label("net"),
                func.row_number()
                .over(partition_by=rows.c.user_id, order_by=last_seen.desc())
                .label("recency"),
            )
            .group_by(rows.c.user_id, rows.c.target_type, rows.c.target_id)
            .subquery()
        )
        statement = (
            select(per_item)
            .where(per_item.c.recency <= self.settings.history_size)
            .order_by(per_item.c.user_id, per_item.c.recency)
        )
        self._statements[key] = statement
        return statement

    def _seen_statement(self, visitors: int):
        """The statement behind items_seen for `visitors` visitors, built once."""
        key = ("seen", visitors)
        if key not in self._statements:
            rows = self._latest_rows(visitors)
            self._statements[key] = select(
                rows.c.user_id, rows.c.target_type, rows.c.target_id
            ).distinct()
        return self._statements[key]
