"""PersonalizationEngine: visitor identity, interaction tracking, decaying category
affinities, privacy erasure and retention, and the rankings the pages show."""

import hashlib
import hmac
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Select,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite

from catalog import search_catalog
from models import (
    Category,
    Doctor,
    Package,
    Procedure,
    UserCategoryAffinity,
    UserInteraction,
    db,
    doctor_procedures,
    package_procedures,
    utcnow,
)

INTERACTION_TYPES = ("view", "click", "search", "form_submit")
TARGET_TYPES = ("procedure", "category", "doctor", "package", "page")
CATALOG_MODELS = {
    "procedure": Procedure,
    "category": Category,
    "doctor": Doctor,
    "package": Package,
}
# How much one interaction adds to a visitor's interest in a category (0..1 scale).
DEFAULT_INTERACTION_WEIGHTS = {
    "view": 0.1,
    "search": 0.2,
    "click": 0.3,
    "form_submit": 0.5,
}
MAX_METADATA_BYTES = 2048
MAX_BATCH_EVENTS = 50
# Affinities that decayed below this are noise; cleanup deletes them.
AFFINITY_FLOOR = 0.01
# How many top search results lend a search its categories.
SEARCH_RESULTS_COUNTED = 3
FINGERPRINT_HEX_LENGTH = 32


@dataclass(frozen=True)
class RankedItem:
    """One catalog item in a ranking, with the score that placed it and why."""

    item: Any
    score: float
    reason: str


@dataclass(frozen=True)
class Event:
    """One validated interaction, as the tracker or a page view reports it."""

    interaction_type: str
    target_type: str | None = None
    target_id: int | None = None
    metadata: dict | None = None


class EventError(ValueError):
    """An event is malformed; the message says what is wrong, for the client."""


def parse_event(raw: Any) -> Event:
    """Check one event's shape and types; raise EventError saying what is wrong."""
    if not isinstance(raw, dict):
        raise EventError("event must be a JSON object")
    unknown = set(raw) - {"interaction_type", "target_type", "target_id", "metadata"}
    if unknown:
        raise EventError(f"unknown field(s): {', '.join(sorted(unknown))}")
    interaction_type = raw.get("interaction_type")
    if interaction_type not in INTERACTION_TYPES:
        raise EventError(
            f"interaction_type must be one of {', '.join(INTERACTION_TYPES)}"
        )
    target_type = raw.get("target_type")
    if target_type not in TARGET_TYPES:
        raise EventError(f"target_type must be one of {', '.join(TARGET_TYPES)}")
    target_id = raw.get("target_id")
    if target_type == "page":
        if target_id is not None:
            raise EventError("target_id must be null for target_type page")
    elif not isinstance(target_id, int) or isinstance(target_id, bool):
        raise EventError(f"target_id must be an integer for target_type {target_type}")
    elif not 0 < target_id < 2**31:
        raise EventError("target_id is out of range")
    metadata = raw.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise EventError("metadata must be a JSON object")
        if len(encode_metadata(metadata).encode()) > MAX_METADATA_BYTES:
            raise EventError(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    if interaction_type == "search":
        query = (metadata or {}).get("query")
        if not isinstance(query, str) or not query.strip():
            raise EventError("a search event needs metadata.query, a non-empty string")
    return Event(interaction_type, target_type, target_id, metadata or None)


def encode_metadata(metadata: dict) -> str:
    """Serialize metadata compactly, as it is stored in extra_data."""
    return json.dumps(metadata, separators=(",", ":"), ensure_ascii=False)


def as_utc(moment: datetime) -> datetime:
    """Treat naive datetimes (SQLite returns them) as the UTC they were written in."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def split_evenly(weight: float, category_ids: Iterable[int]) -> dict[int, float]:
    """Share a weight among categories in proportion to how often each appears."""
    counts = Counter(category_ids)
    total = sum(counts.values())
    return {cid: weight * n / total for cid, n in counts.items()} if total else {}


def sql_time(moment: datetime) -> ColumnElement[datetime]:
    """Bind a timestamp so both databases compare it as one."""
    return literal(moment, DateTime(timezone=True))


def sql_greatest_least() -> tuple:
    """Return the two-argument max and min SQL functions of the database in use."""
    if db.session.get_bind().dialect.name == "postgresql":
        return func.greatest, func.least
    return func.max, func.min  # SQLite's scalar forms


class PersonalizationEngine:
    """Identity, tracking, affinities and rankings, on plain values (no Flask)."""

    def __init__(
        self,
        fingerprint_secret: str,
        decay_rate: float = 0.95,
        weights: dict[str, float] | None = None,
        popularity_window_days: int = 30,
    ):
        self.fingerprint_secret = fingerprint_secret.encode()
        self.decay_rate = decay_rate
        self.weights = {**DEFAULT_INTERACTION_WEIGHTS, **(weights or {})}
        self.popularity_window_days = popularity_window_days

    # Identity

    def create_browser_fingerprint(
        self,
        user_agent: str | None,
        ip_address: str | None,
        accept_language: str | None,
    ) -> str:
        """Return a visitor id: a keyed hash (HMAC-SHA256) of what the browser sends.

        Keyed, because an unkeyed hash of an IPv4 address and a common user agent
        can be reversed by enumerating them; without the key it cannot.
        """
        message = "\n".join(
            (user_agent or "", ip_address or "", accept_language or "")
        ).encode()
        digest = hmac.new(self.fingerprint_secret, message, hashlib.sha256)
        return digest.hexdigest()[:FINGERPRINT_HEX_LENGTH]

    # Tracking

    def validate_events(
        self, raw_events: list
    ) -> tuple[list[Event], list[dict[str, Any]]]:
        """Split raw events into valid ones and rejections with their index and reason.

        Targets are checked against the catalog with one query per target type.
        """
        parsed: list[tuple[int, Event]] = []
        rejected: list[dict[str, Any]] = []
        for index, raw in enumerate(raw_events):
            try:
                parsed.append((index, parse_event(raw)))
            except EventError as error:
                rejected.append({"index": index, "error": str(error)})
        known = self._existing_targets(event for _, event in parsed)
        valid = []
        for index, event in parsed:
            if event.target_type in CATALOG_MODELS and (
                event.target_id not in known[event.target_type]
            ):
                rejected.append(
                    {
                        "index": index,
                        "error": f"no {event.target_type} with id {event.target_id}",
                    }
                )
            else:
                valid.append(event)
        rejected.sort(key=lambda r: r["index"])
        return valid, rejected

    def _existing_targets(self, events: Iterable[Event]) -> dict[str, set[int]]:
        wanted: dict[str, set[int]] = defaultdict(set)
        for event in events:
            if event.target_type in CATALOG_MODELS:
                wanted[event.target_type].add(event.target_id)
        known: dict[str, set[int]] = defaultdict(set)
        for target_type, ids in wanted.items():
            model = CATALOG_MODELS[target_type]
            known[target_type] = set(
                db.session.scalars(select(model.id).where(model.id.in_(ids)))
            )
        return known

    def record_interactions(
        self,
        user_id: str,
        session_id: str,
        events: list[Event],
        now: datetime | None = None,
    ) -> int:
        """Store validated events and raise the visitor's category affinities.

        Everything happens in one transaction: the log and the affinities agree.
        """
        if not events:
            return 0
        now = now or utcnow()
        db.session.execute(
            insert(UserInteraction),
            [
                {
                    "user_id": user_id,
                    "session_id": session_id,
                    "interaction_type": event.interaction_type,
                    "target_type": event.target_type,
                    "target_id": event.target_id,
                    "extra_data": encode_metadata(event.metadata)
                    if event.metadata
                    else None,
                    "timestamp": now,
                }
                for event in events
            ],
        )
        self.add_affinity(user_id, self.category_weights(events), now)
        db.session.commit()
        return len(events)

    def category_weights(self, events: list[Event]) -> dict[int, float]:
        """Turn events into how much each category's affinity should rise.

        A procedure counts for its category; a doctor or a package for the
        categories of their procedures, shared in proportion, so one click weighs
        the same whatever its target; a search for the categories of its top results.
        """
        totals: dict[int, float] = defaultdict(float)
        by_type: dict[str, set[int]] = defaultdict(set)
        for event in events:
            if event.target_type in CATALOG_MODELS:
                by_type[event.target_type].add(event.target_id)
        categories_of = self._categories_of_targets(by_type)
        for event in events:
            weight = self.weights.get(event.interaction_type, 0.0)
            if event.interaction_type == "search":
                shares = split_evenly(
                    weight, self.search_result_categories(event.metadata["query"])
                )
            else:
                shares = split_evenly(
                    weight, categories_of.get((event.target_type, event.target_id), [])
                )
            for category_id, share in shares.items():
                totals[category_id] += share
        return dict(totals)

    def _categories_of_targets(
        self, ids_by_type: dict[str, set[int]]
    ) -> dict[tuple[str, int], list[int]]:
        """Map each (target_type, id) to its categories, one entry per procedure."""
        found: dict[tuple[str, int], list[int]] = defaultdict(list)
        for category_id in ids_by_type.get("category", ()):
            found[("category", category_id)].append(category_id)
        queries = {
            "procedure": select(Procedure.id, Procedure.category_id).where(
                Procedure.id.in_(ids_by_type.get("procedure", ()))
            ),
            "doctor": select(doctor_procedures.c.doctor_id, Procedure.category_id)
            .join(Procedure, Procedure.id == doctor_procedures.c.procedure_id)
            .where(doctor_procedures.c.doctor_id.in_(ids_by_type.get("doctor", ()))),
            "package": select(package_procedures.c.package_id, Procedure.category_id)
            .join(Procedure, Procedure.id == package_procedures.c.procedure_id)
            .where(package_procedures.c.package_id.in_(ids_by_type.get("package", ()))),
        }
        for target_type, query in queries.items():
            if ids_by_type.get(target_type):
                for target_id, category_id in db.session.execute(query):
                    found[(target_type, target_id)].append(category_id)
        return found

    def search_result_categories(self, query: str) -> list[int]:
        """Return the categories of a search's top results, one entry per result."""
        results = search_catalog(query)
        top = [c.id for c in results.categories] + [
            p.category_id for p in results.procedures
        ]
        return top[:SEARCH_RESULTS_COUNTED]

    def add_affinity(
        self, user_id: str, weights: dict[int, float], now: datetime
    ) -> None:
        """Apply new = clamp(old * decay^days + weight, 0, 1) for each category.

        One upsert statement per (visitor, category): the database computes the new
        score from the row it locks, so concurrent requests cannot lose an update.
        """
        if not weights:
            return
        table = UserCategoryAffinity.__table__
        postgres = db.session.get_bind().dialect.name == "postgresql"
        insert_for = postgresql.insert if postgres else sqlite.insert
        greatest, least = sql_greatest_least()
        statement = (
            insert_for(table)
            .values(
                user_id=bindparam("user_id"),
                category_id=bindparam("category_id"),
                affinity_score=bindparam("initial"),
                last_updated=sql_time(now),
            )
            .on_conflict_do_update(
                index_elements=[table.c.user_id, table.c.category_id],
                set_={
                    "affinity_score": greatest(
                        0.0, least(1.0, self._decayed_score(now) + bindparam("weight"))
                    ),
                    "last_updated": sql_time(now),
                },
            )
        )
        db.session.execute(
            statement,
            [
                {
                    "user_id": user_id,
                    "category_id": category_id,
                    "initial": min(1.0, max(0.0, weight)),
                    "weight": weight,
                }
                for category_id, weight in sorted(weights.items())
            ],
        )

    def get_affinities(
        self, user_id: str, now: datetime | None = None
    ) -> dict[int, float]:
        """Return the visitor's affinity per category, decayed to now."""
        now = now or utcnow()
        rows = db.session.execute(
            select(
                UserCategoryAffinity.category_id,
                UserCategoryAffinity.affinity_score,
                UserCategoryAffinity.last_updated,
            ).where(UserCategoryAffinity.user_id == user_id)
        )
        return {
            category_id: self.decayed(score, as_utc(updated), now)
            for category_id, score, updated in rows
        }

    def decayed(self, score: float, last_updated: datetime, now: datetime) -> float:
        """Fade a score by the decay rate for each day since it was last raised."""
        days = max(0.0, (now - last_updated).total_seconds() / 86400)
        return score * self.decay_rate**days

    # Privacy

    def forget_visitor(self, user_ids: Iterable[str]) -> dict[str, int]:
        """Delete every interaction and affinity of these visitor ids; count them."""
        ids = sorted(set(user_ids))
        interactions = db.session.execute(
            delete(UserInteraction).where(UserInteraction.user_id.in_(ids))
        ).rowcount
        affinities = db.session.execute(
            delete(UserCategoryAffinity).where(UserCategoryAffinity.user_id.in_(ids))
        ).rowcount
        db.session.commit()
        return {"interactions": interactions, "affinities": affinities}

    # Retention

    def expired_interactions(self, cutoff: datetime) -> Select:
        """Select the ids of interactions older than the cutoff, oldest first."""
        return (
            select(UserInteraction.id)
            .where(UserInteraction.timestamp < cutoff)
            .order_by(UserInteraction.id)
        )

    def faded_affinities(self, now: datetime) -> Select:
        """Select the ids of affinities whose decayed score fell below the floor.

        The decay is applied in SQL the same way reads apply it.
        """
        table = UserCategoryAffinity.__table__
        return (
            select(table.c.id)
            .where(self._decayed_score(now) < AFFINITY_FLOOR)
            .order_by(table.c.id)
        )

    def _decayed_score(self, now: datetime) -> ColumnElement[float]:
        """SQL for a stored affinity faded to `now`, as get_affinities computes it."""
        table = UserCategoryAffinity.__table__
        if db.session.get_bind().dialect.name == "postgresql":
            days = func.extract("epoch", sql_time(now) - table.c.last_updated) / 86400.0
        else:
            days = func.julianday(sql_time(now)) - func.julianday(table.c.last_updated)
        greatest, _ = sql_greatest_least()
        # Clock skew between workers must not make an affinity grow.
        return table.c.affinity_score * func.power(self.decay_rate, greatest(days, 0.0))

    def count(self, ids: Select) -> int:
        """Count the rows a selection of ids names."""
        return db.session.scalar(select(func.count()).select_from(ids.subquery()))

    def delete_in_batches(self, model, ids: Select, batch_size: int) -> Iterator[int]:
        """Delete the selected rows batch by batch, each in its own transaction.

        Short transactions keep the site serving while a large backlog is removed;
        yields how many rows each batch deleted.
        """
        while True:
            batch = ids.limit(batch_size).subquery()
            deleted = db.session.execute(
                delete(model).where(model.id.in_(select(batch.c.id)))
            ).rowcount
            db.session.commit()
            if not deleted:
                return
            yield deleted

    # Rankings

    def _recent_interactions(self, target_type: str) -> Select:
        """Count each target's interactions inside the popularity window."""
        since = utcnow() - timedelta(days=self.popularity_window_days)
        return (
            select(
                UserInteraction.target_id.label("target_id"),
                func.count().label("hits"),
            )
            .where(
                UserInteraction.target_type == target_type,
                UserInteraction.timestamp >= since,
            )
            .group_by(UserInteraction.target_id)
        )

    def get_popular_categories(self, limit: int = 6) -> list[RankedItem]:
        """Rank categories by recent interest in them and in their procedures."""
        direct = self._recent_interactions("category").subquery()
        via_procedures = self._recent_interactions("procedure").subquery()
        per_category = union_all(
            select(direct.c.target_id.label("category_id"), direct.c.hits),
            select(Procedure.category_id, via_procedures.c.hits).join(
                via_procedures, via_procedures.c.target_id == Procedure.id
            ),
        ).subquery()
        hits = (
            select(per_category.c.category_id, func.sum(per_category.c.hits).label("n"))
            .group_by(per_category.c.category_id)
            .subquery()
        )
        # With no interactions yet, the curated catalog order (by id) stands.
        rows = db.session.execute(
            select(Category, func.coalesce(hits.c.n, 0))
            .outerjoin(hits, hits.c.category_id == Category.id)
            .order_by(func.coalesce(hits.c.n, 0).desc(), Category.id)
            .limit(limit)
        )
        return [self._ranked(item, n) for item, n in rows]

    def get_popular_procedures(self, limit: int = 6) -> list[RankedItem]:
        """Rank procedures by recent interactions, then by doctors offering them."""
        hits = self._recent_interactions("procedure").subquery()
        offered_by = (
            select(doctor_procedures.c.procedure_id, func.count().label("doctors"))
            .group_by(doctor_procedures.c.procedure_id)
            .subquery()
        )
        rows = db.session.execute(
            select(Procedure, func.coalesce(hits.c.hits, 0))
            .outerjoin(hits, hits.c.target_id == Procedure.id)
            .outerjoin(offered_by, offered_by.c.procedure_id == Procedure.id)
            .order_by(
                func.coalesce(hits.c.hits, 0).desc(),
                func.coalesce(offered_by.c.doctors, 0).desc(),
                Procedure.name,
            )
            .limit(limit)
        )
        return [self._ranked(item, n) for item, n in rows]

    def get_popular_doctors(self, limit: int = 9) -> list[RankedItem]:
        """Rank doctors by recent interactions, then by rating and review count."""
        hits = self._recent_interactions("doctor").subquery()
        rows = db.session.execute(
            select(Doctor, func.coalesce(hits.c.hits, 0))
            .outerjoin(hits, hits.c.target_id == Doctor.id)
            .order_by(
                func.coalesce(hits.c.hits, 0).desc(),
                Doctor.rating.desc(),
                Doctor.review_count.desc(),
                Doctor.name,
            )
            .limit(limit)
        )
        return [self._ranked(item, n) for item, n in rows]

    @staticmethod
    def _ranked(item: Any, hits: int) -> RankedItem:
        reason = "popular" if hits else "catalog"
        return RankedItem(item=item, score=float(hits), reason=reason)
