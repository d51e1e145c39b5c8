"""What the dashboard's reports share: the window of days they cover, SQL that
buckets timestamps by day and reads JSON alike on SQLite and PostgreSQL, and the
clicks on recommended cards, each attributed to the list it came from."""

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import String, func, select, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.functions import FunctionElement

from models import RecommendationImpression, UserInteraction

# Lists read per query when attributing clicks (an IN list both databases take).
LIST_IDS_PER_QUERY = 500
# What a list shown to a visitor outside the experiment is reported as.
NO_ARM = "none"


class day_of(FunctionElement):  # noqa: N801 (reads as the SQL function it is)
    """The UTC day of a timestamp as 'YYYY-MM-DD' text (sorts and compares as
    dates do, and groups alike on both databases)."""

    type = String()
    name = "day_of"
    inherit_cache = True


class json_text(FunctionElement):  # noqa: N801
    """One top-level field of a JSON text column, as text (NULL when absent).

    The field's name is written into the SQL, not bound: a grouped expression
    must read the same in SELECT and GROUP BY, which a parameter would not."""

    type = String()
    name = "json_text"
    inherit_cache = False

    def __init__(self, column, key: str):
        if not re.fullmatch(r"[a-z_]+", key):
            raise ValueError(f"not a field name: {key!r}")
        self.key = key
        super().__init__(column)


@compiles(day_of)
def _day_on_postgresql(element, compiler, **kw):
    (column,) = element.clauses
    column = compiler.process(column, **kw)
    return f"to_char(timezone('UTC', {column}), 'YYYY-MM-DD')"


@compiles(day_of, "sqlite")
def _day_on_sqlite(element, compiler, **kw):
    (column,) = element.clauses
    return f"date({compiler.process(column, **kw)})"


@compiles(json_text)
def _json_text_on_postgresql(element, compiler, **kw):
    (column,) = element.clauses
    return f"(CAST({compiler.process(column, **kw)} AS json) ->> '{element.key}')"


@compiles(json_text, "sqlite")
def _json_text_on_sqlite(element, compiler, **kw):
    (column,) = element.clauses
    column = compiler.process(column, **kw)
    return f"CAST(json_extract({column}, '$.{element.key}') AS TEXT)"


@dataclass(frozen=True)
class Window:
    """The last `days` whole UTC days, today included."""

    days: int
    today: date

    @classmethod
    def ending(cls, now: datetime, days: int) -> "Window":
        return cls(days, now.astimezone(UTC).date())

    @property
    def first_day(self) -> date:
        return self.today - timedelta(days=self.days - 1)

    @property
    def since(self) -> datetime:
        """Midnight UTC of the first day: the lower bound of every query."""
        return datetime.combine(self.first_day, time(0), UTC)

    def day_labels(self) -> list[str]:
        """Every day of the window, oldest first, as day_of() writes them."""
        return [
            (self.first_day + timedelta(days=n)).isoformat() for n in range(self.days)
        ]

    def series(self, counts: dict[str, float]) -> list[float]:
        """Per-day values for every day of the window (0 where none)."""
        return [counts.get(day, 0) for day in self.day_labels()]


@dataclass(frozen=True)
class Click:
    """A click on a recommended card, with the list it was in."""

    user_id: str
    session_id: str
    at: datetime
    list_id: str
    position: int
    list_name: str
    item_kind: str
    source: str
    arm: str


def first_seen(since: datetime):
    """Each visitor active since `since`, with the time of their first
    interaction ever: a subquery (user_id, at). Only those visitors are grouped
    (each a range of the (user_id, timestamp) index), never the whole log."""
    earlier = aliased(UserInteraction)
    active = select(UserInteraction.user_id).where(UserInteraction.timestamp >= since)
    return (
        select(earlier.user_id, func.min(earlier.timestamp).label("at"))
        .where(earlier.user_id.in_(active))
        .group_by(earlier.user_id)
        .subquery()
    )


def rate(part: int, whole: int) -> float | None:
    """part / whole, or None when there is nothing to divide by."""
    return part / whole if whole else None


def recommended_clicks(
    session, since: datetime | None = None, visitor_id: str | None = None
) -> list[Click]:
    """Clicks since `since` on cards of lists shown since then, each card once
    (the first click): only clicks whose list exists, was shown to the same
    visitor, and has an item at the position named. The one rule of
    attribution: the experiment, the dashboard and a visitor's own stats
    (`visitor_id`: theirs only) all count with it."""
    query = (
        select(
            UserInteraction.user_id,
            UserInteraction.session_id,
            UserInteraction.timestamp,
            UserInteraction.extra_data,
        )
        .where(
            UserInteraction.interaction_type == "click",
            UserInteraction.extra_data.like('%"list_id"%'),
        )
        .order_by(UserInteraction.timestamp, UserInteraction.id)
    )
    if since is not None:
        query = query.where(UserInteraction.timestamp >= since)
    if visitor_id is not None:
        query = query.where(UserInteraction.user_id == visitor_id)
    rows = session.execute(query)
    found = []
    for user_id, session_id, at, extra in rows:
        try:
            metadata = json.loads(extra)
        except ValueError:
            continue
        list_id, position = metadata.get("list_id"), metadata.get("position")
        if isinstance(list_id, str) and type(position) is int:
            found.append((user_id, session_id, at, list_id, position))
    lists = shown_lists(session, {list_id for *_, list_id, _ in found}, since)
    clicks, seen = [], set()
    for user_id, session_id, at, list_id, position in found:
        shown = lists.get(list_id)
        if not shown or shown[0] != user_id or (list_id, position) in seen:
            continue
        _, list_name, item_kind, items, arm = shown
        if not 1 <= position <= len(items):
            continue
        seen.add((list_id, position))
        source = items[position - 1][1] if len(items[position - 1]) > 1 else "?"
        clicks.append(
            Click(
                user_id,
                session_id,
                at,
                list_id,
                position,
                list_name,
                item_kind,
                str(source),
                arm or NO_ARM,
            )
        )
    return clicks


def shown_lists(session, list_ids: Iterable[str], since: datetime | None) -> dict:
    """Lists shown since `since` (None: ever), by id: (owner, name, kind, items,
    arm)."""
    wanted = sorted(list_ids)
    lists = {}
    for start in range(0, len(wanted), LIST_IDS_PER_QUERY):
        impression = RecommendationImpression
        rows = session.execute(
            select(
                impression.id,
                impression.user_id,
                impression.list_name,
                impression.item_kind,
                impression.items,
                impression.arm,
            ).where(
                impression.id.in_(wanted[start : start + LIST_IDS_PER_QUERY]),
                impression.shown_at >= since if since else true(),
            )
        )
        for list_id, owner, name, kind, items, arm in rows:
            lists[list_id] = (owner, name, kind, json.loads(items), arm)
    return lists
