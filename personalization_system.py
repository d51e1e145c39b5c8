"""PersonalizationEngine: visitor identity, interaction tracking, decaying category
affinities, precomputed popularity and co-visitation, the rankings the pages show
(with optional AWS Personalize re-ranking), privacy erasure and retention."""

import functools
import hashlib
import hmac
import json
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    DateTime,
    Float,
    Select,
    String,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    union_all,
    update,
)

from catalog import search_catalog
from models import (
    Category,
    Doctor,
    ItemPopularity,
    Package,
    PersonalizeOutbox,
    Procedure,
    ProcedureCovisitation,
    UserCategoryAffinity,
    UserInteraction,
    db,
    dialect_insert,
    doctor_procedures,
    is_postgres,
    package_procedures,
    sql_days_since,
    sql_decayed,
    sql_greatest,
    sql_least,
    sql_time,
    utcnow,
)
from personalize_client import (
    MAX_EVENTS_PER_CALL,
    MAX_IMPRESSION_IDS,
    NullReranker,
    PersonalizeUnavailable,
    Reranker,
    personalize_event,
)

INTERACTION_TYPES = ("view", "click", "search", "form_submit")
TARGET_TYPES = ("procedure", "category", "doctor", "package", "page")
CATALOG_MODELS = {
    "procedure": Procedure,
    "category": Category,
    "doctor": Doctor,
    "package": Package,
}
# How much one interaction adds to a visitor's interest (0..1 scale). One table for
# site tracking, Amplitude events and Personalize's eventValue. The Amplitude rows
# are Amplitude's weight scale (3.0 ... -2.5) x 0.3, so an Amplitude click equals a
# site click. Negative weights lower affinity (never below 0) and demote the item.
DEFAULT_INTERACTION_WEIGHTS = {
    "view": 0.1,
    "search": 0.2,
    "click": 0.3,
    "form_submit": 0.5,
    "donate": 0.9,
    "fundraise": 0.9,
    "upvote": 0.6,
    "share": 0.6,
    "bookmark": 0.54,
    "download": 0.45,
    "comment": 0.45,
    "scroll_impression": 0.21,
    "initial_impression": 0.09,
    "hide": -0.15,
    "not_interested": -0.24,
    "downvote": -0.3,
    "flag_content": -0.75,
}
MAX_METADATA_BYTES = 2048
MAX_BATCH_EVENTS = 50
# Affinities that decayed below this are noise; cleanup deletes them.
AFFINITY_FLOOR = 0.01
# How many top search results lend a search its categories.
SEARCH_RESULTS_COUNTED = 3
FINGERPRINT_HEX_LENGTH = 32
# How many of a visitor's most recent distinct items seed co-visitation.
RECENT_HISTORY_SIZE = 50
# Interactions read per visitor to find those items: bounds the cost for visitors
# (and bots) with a long history.
RECENT_ROWS = 500
COVISITATION_SEEDS = 10
# Each older seed counts this much less than the one after it.
SEED_RECENCY_DECAY = 0.85
# How many categories a visitor's procedures are drawn from.
TOP_CATEGORIES = 3
# Candidates handed to a re-ranker: "a few dozen".
RERANK_CANDIDATES = 36
MAX_LIMIT = 50
# Procedures whose doctors are ranked for a visitor.
TOP_PROCEDURES = 12
# Popular items kept per type in the in-process cache.
POPULAR_CACHE_SIZE = 200
# An event Personalize refused this many times is left out (a dead letter).
OUTBOX_MAX_ATTEMPTS = 10
# A claim older than this belongs to a sync that died; others may take the rows.
OUTBOX_CLAIM_TIMEOUT = timedelta(minutes=5)


@dataclass(frozen=True)
class RankedItem:
    """One catalog item in a ranking, with the score that placed it and why."""

    item: Any
    score: float
    reason: str


@dataclass(frozen=True)
class Ranking:
    """A ranked list and which ranking produced it."""

    items: list[RankedItem]
    # "affinity" (the visitor's own interests), "personalize" (re-ranked by AWS),
    # "popular" (nothing personal), or "mixed" (personal items, popular fill).
    source: str

    @property
    def personalized(self) -> bool:
        return self.source != "popular"

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class Event:
    """One validated interaction, as the tracker or a page view reports it."""

    interaction_type: str
    target_type: str | None = None
    target_id: int | None = None
    metadata: dict | None = None
    # When it happened, if not now (webhook events arrive late).
    occurred_at: datetime | None = None
    # Items shown with it ("procedure:12", ...), forwarded to Personalize.
    impression: tuple[str, ...] = ()
    # False for events that Personalize gets folded into another one's impression.
    stream: bool = True


@dataclass(frozen=True)
class VisitorEvent:
    """An event and whose it is."""

    user_id: str
    session_id: str
    event: Event


@dataclass(frozen=True)
class RecentTarget:
    """A catalog item in a visitor's recent history, with their net weight on it."""

    target_type: str
    target_id: int
    net_weight: float


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
    if isinstance(target_id, float) and target_id.is_integer():
        target_id = int(target_id)  # JSON has one number type: 7.0 is 7
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
        try:
            size = len(encode_metadata(metadata).encode())
        except UnicodeEncodeError:  # JSON lets "\ud800" through; UTF-8 does not
            raise EventError("metadata holds text that is not valid Unicode") from None
        if size > MAX_METADATA_BYTES:
            raise EventError(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    if interaction_type == "search":
        query = (metadata or {}).get("query")
        if not isinstance(query, str) or not query.strip():
            raise EventError("a search event needs metadata.query, a non-empty string")
        if not is_storable_text(query):  # it is searched for in the database
            raise EventError("metadata.query must not contain NUL characters")
    return Event(interaction_type, target_type, target_id, metadata or None)


def is_storable_text(text: str) -> bool:
    """Whether text can reach the database: valid UTF-8 and no NUL characters.

    JSON lets lone surrogates ("\ud800") and NUL through; UTF-8 encoding and
    PostgreSQL refuse them, and an id or a query carrying one matches nothing.
    """
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


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


@dataclass(frozen=True)
class VisitorProfile:
    """What the rankings know about one visitor, read once per page."""

    user_id: str | None
    affinities: dict[int, float]
    # Recent distinct catalog targets, newest first.
    history: list[tuple[str, int]]
    # Targets the visitor's signals on are net negative (hidden, "not interested"):
    # demoted to the end of their rankings.
    disliked: frozenset[tuple[str, int]] = frozenset()
    # The visitor's own net positive weight on each recent target.
    interest: dict[tuple[str, int], float] = field(default_factory=dict)


def catalog_order(target_type: str) -> list:
    """The order of a catalog with no interactions yet: curated, then by merit."""
    if target_type == "category":
        return [Category.id]
    if target_type == "procedure":
        offered_by = (
            select(func.count())
            .where(doctor_procedures.c.procedure_id == Procedure.id)
            .scalar_subquery()
        )
        return [offered_by.desc(), Procedure.name]
    if target_type == "doctor":
        return [Doctor.rating.desc(), Doctor.review_count.desc(), Doctor.name]
    return [Package.price, Package.id]


def category_shares_of_targets():
    """Every catalog target's categories, as (type, id, category, share) rows.

    The SQL twin of event_category_shares: a doctor or package spreads over the
    categories of its procedures in proportion to how many it has in each.
    """
    parts = [
        select(
            literal("category", String).label("target_type"),
            Category.id.label("target_id"),
            Category.id.label("category_id"),
            literal(1.0).label("share"),
        ),
        select(
            literal("procedure", String),
            Procedure.id,
            Procedure.category_id,
            literal(1.0),
        ),
    ]
    for target_type, link in (
        ("doctor", doctor_procedures.c.doctor_id),
        ("package", package_procedures.c.package_id),
    ):
        counts = (
            select(
                link.label("target_id"),
                Procedure.category_id,
                func.count().label("n"),
            )
            .join(Procedure, Procedure.id == link.table.c.procedure_id)
            .group_by(link, Procedure.category_id)
            .subquery()
        )
        totals = (
            select(counts.c.target_id, func.sum(counts.c.n).label("total"))
            .group_by(counts.c.target_id)
            .subquery()
        )
        parts.append(
            select(
                literal(target_type, String),
                counts.c.target_id,
                counts.c.category_id,
                counts.c.n * 1.0 / totals.c.total,
            ).join(totals, totals.c.target_id == counts.c.target_id)
        )
    return union_all(*parts).subquery()


def reorder(
    candidates: list[tuple[int, float, str]],
    target_type: str,
    ranked: list[tuple[str, float]],
) -> list[tuple[int, float, str]]:
    """Put candidates in a re-ranker's order; any it left out keep theirs, after."""
    by_key = {f"{target_type}:{entry[0]}": entry for entry in candidates}
    ordered = []
    for key, score in ranked:
        entry = by_key.pop(key, None)
        if entry:
            ordered.append((entry[0], score, entry[2]))
    leftover = [e for e in candidates if f"{target_type}:{e[0]}" in by_key]
    return ordered + leftover


def ranking_source(personal: int, limit: int) -> str:
    """Name what filled a ranking: all personal, some (then popular), or none."""
    if not personal:
        return "popular"
    return "affinity" if personal >= limit else "mixed"


UPSERT_ROWS_PER_STATEMENT = 500


def upsert_rows(table, rows: list[dict], keys: list, set_for_existing) -> None:
    """INSERT ... ON CONFLICT DO UPDATE for many rows.

    `set_for_existing(excluded)` gives the SET clause for rows that already exist;
    `excluded` holds the proposed row. PostgreSQL gets multi-row statements (its
    cost is round trips: measured 2x faster on 1000-event webhook batches);
    SQLite, in-process, gets one reusable statement run for every row.
    """
    if not rows:
        return
    if not is_postgres():
        statement = dialect_insert(table)
        db.session.execute(
            statement.on_conflict_do_update(
                index_elements=keys, set_=set_for_existing(statement.excluded)
            ),
            rows,
        )
        return
    for start in range(0, len(rows), UPSERT_ROWS_PER_STATEMENT):
        statement = dialect_insert(table).values(
            rows[start : start + UPSERT_ROWS_PER_STATEMENT]
        )
        db.session.execute(
            statement.on_conflict_do_update(
                index_elements=keys, set_=set_for_existing(statement.excluded)
            )
        )


def row_count(table) -> int:
    """Count a table's rows."""
    return db.session.scalar(select(func.count()).select_from(table))


class PersonalizationEngine:
    """Identity, tracking, affinities and rankings, on plain values (no Flask)."""

    def __init__(
        self,
        fingerprint_secret: str,
        decay_rate: float = 0.95,
        weights: dict[str, float] | None = None,
        popularity_window_days: int = 30,
        popularity_decay_rate: float = 0.9,
        popularity_cache_seconds: float = 60.0,
        covisitation_weight: float = 0.4,
        history_weight: float = 0.6,
        reranker: Reranker | None = None,
        stream_events: bool = False,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.fingerprint_secret = fingerprint_secret.encode()
        self.decay_rate = decay_rate
        self.weights = {**DEFAULT_INTERACTION_WEIGHTS, **(weights or {})}
        self.popularity_window_days = popularity_window_days
        self.popularity_decay_rate = popularity_decay_rate
        self.popularity_cache_seconds = popularity_cache_seconds
        self.covisitation_weight = covisitation_weight
        self.history_weight = history_weight
        self.reranker = reranker or NullReranker()
        self.stream_events = stream_events
        # What "now" is for decay and windows; the offline evaluation sets it to
        # the moment its training data ends.
        self.clock = clock
        self._popular_cache: dict[str, tuple[float, list[tuple[int, float]]]] = {}

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

    def external_visitor_id(self, source: str, raw_id: str) -> str:
        """Map another system's user or device id to a visitor id, with the same key
        as fingerprints, so raw third-party ids are never stored."""
        message = f"{source}\n{raw_id}".encode()
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
        """Store one visitor's validated events; see record_visitor_events."""
        return self.record_visitor_events(
            [VisitorEvent(user_id, session_id, event) for event in events], now
        )

    def record_visitor_events(
        self, entries: list["VisitorEvent"], now: datetime | None = None
    ) -> int:
        """Store validated events of any visitors and update what rankings read.

        One transaction, committed before returning: the log, affinities, item
        popularity, co-visitation and the Personalize outbox always agree, and a
        failure stores nothing. An event with its own time (a webhook) counts as
        much as its age allows: weight x decay^days.
        """
        if not entries:
            return 0
        now = now or self.clock()
        # Page views name no item: no history to read for them.
        histories: dict[str, list[RecentTarget]] = defaultdict(list)
        catalog_users = {
            e.user_id for e in entries if e.event.target_type in CATALOG_MODELS
        }
        if catalog_users:
            histories.update(self.recent_targets_of(catalog_users, now=now))
        db.session.execute(
            insert(UserInteraction),
            [
                {
                    "user_id": entry.user_id,
                    "session_id": entry.session_id,
                    "interaction_type": entry.event.interaction_type,
                    "target_type": entry.event.target_type,
                    "target_id": entry.event.target_id,
                    "extra_data": encode_metadata(entry.event.metadata)
                    if entry.event.metadata
                    else None,
                    "timestamp": entry.event.occurred_at or now,
                }
                for entry in entries
            ],
        )
        shares = self.event_category_shares([entry.event for entry in entries])
        self._add_affinities(entries, shares, now)
        self._add_popularity(entries, shares, histories, now)
        self._add_covisitation(entries, histories)
        if self.stream_events:
            self._queue_for_personalize(entries, now)
        db.session.commit()
        return len(entries)

    def recent_targets(
        self, user_id: str, now: datetime | None = None
    ) -> list[tuple[str, int]]:
        """Return the visitor's most recent distinct catalog targets, newest first."""
        return [
            (target.target_type, target.target_id)
            for target in self.recent_targets_of({user_id}, now=now).get(user_id, [])
        ]

    def recent_targets_of(
        self, user_ids: set[str], now: datetime | None = None
    ) -> dict[str, list["RecentTarget"]]:
        """Each visitor's most recent distinct catalog targets, newest first, with
        the net weight of what they did to each (negative: they hid or disliked it).

        Reads at most each visitor's last RECENT_ROWS interactions in the
        popularity window, through the (user_id, timestamp) index: cost grows
        neither with the log nor with one visitor's (or bot's) own history.
        """
        since = (now or self.clock()) - timedelta(days=self.popularity_window_days)
        users = sorted(user_ids)
        parameters = {f"user_{i}": user for i, user in enumerate(users)}
        rows = db.session.execute(
            self._recent_targets_query(len(users)), {**parameters, "since": since}
        )
        found: dict[str, list[RecentTarget]] = defaultdict(list)
        for user_id, target_type, target_id, net, _ in rows:
            found[user_id].append(RecentTarget(target_type, target_id, float(net)))
        return found

    @functools.cache  # noqa: B019 (one engine per app; built once, reused per page)
    def _recent_targets_query(self, users: int) -> Select:
        """The statement behind recent_targets_of for `users` visitors, with its
        values as parameters (user_0, user_1, ..., since).

        Built once per visitor count: composing it (a CASE over the weight table)
        cost more than running it, on every page view. Each visitor's rows come
        from their own index range, newest first, cut at RECENT_ROWS.
        """
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
                log.c.user_id == bindparam(f"user_{i}"),
                log.c.timestamp >= since,
                log.c.target_type.in_(tuple(CATALOG_MODELS)),
            )
            .order_by(log.c.timestamp.desc())
            .limit(RECENT_ROWS)
            .subquery()
            for i in range(users)
        ]
        rows = union_all(*(select(part) for part in latest)).subquery()
        last_seen = func.max(rows.c.timestamp)
        per_target = (
            select(
                rows.c.user_id,
                rows.c.target_type,
                rows.c.target_id,
                func.sum(self._sql_weight(rows.c.interaction_type)).label("net"),
                func.row_number()
                .over(partition_by=rows.c.user_id, order_by=last_seen.desc())
                .label("recency"),
            )
            .group_by(rows.c.user_id, rows.c.target_type, rows.c.target_id)
            .subquery()
        )
        return (
            select(per_target)
            .where(per_target.c.recency <= RECENT_HISTORY_SIZE)
            .order_by(per_target.c.user_id, per_target.c.recency)
        )

    def _sql_weight(self, interaction_type):
        """The weight table as a SQL CASE over an interaction_type column."""
        return case(
            *((interaction_type == kind, w) for kind, w in self.weights.items()),
            else_=0.0,
        )

    def event_category_shares(self, events: list[Event]) -> list[dict[int, float]]:
        """For each event, the categories it counts for, as fractions summing to 1.

        A procedure counts for its category; a doctor or a package for the
        categories of their procedures, in proportion, so one click weighs the same
        whatever its target; a search for the categories of its top results.
        """
        by_type: dict[str, set[int]] = defaultdict(set)
        for event in events:
            if event.target_type in CATALOG_MODELS:
                by_type[event.target_type].add(event.target_id)
        categories_of = self._categories_of_targets(by_type)
        shares = []
        for event in events:
            if event.interaction_type == "search":
                categories = self.search_result_categories(event.metadata["query"])
            else:
                categories = categories_of.get((event.target_type, event.target_id), [])
            shares.append(split_evenly(1.0, categories))
        return shares

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

    def aged_weight(self, event: Event, rate: float, now: datetime) -> float:
        """An event's weight, faded by its age (events from webhooks can be old)."""
        weight = self.weights.get(event.interaction_type, 0.0)
        if event.occurred_at is None:
            return weight
        return self.decayed(weight, as_utc(event.occurred_at), now, rate)

    def _add_affinities(
        self,
        entries: list["VisitorEvent"],
        shares: list[dict[int, float]],
        now: datetime,
    ) -> None:
        """Sum each visitor's category gains, then apply them all in one upsert."""
        gains: dict[tuple[str, int], float] = defaultdict(float)
        for entry, event_shares in zip(entries, shares, strict=True):
            weight = self.aged_weight(entry.event, self.decay_rate, now)
            for category_id, share in event_shares.items():
                gains[(entry.user_id, category_id)] += weight * share
        self.add_affinity(gains, now)

    def add_affinity(self, gains: dict[tuple[str, int], float], now: datetime) -> None:
        """Apply new = clamp(old * decay^days + gain, 0, 1) per (visitor, category).

        An upsert: the database computes the new score from the row it locks, so
        concurrent requests cannot lose an update. New rows take the raw gain and
        are clamped before the transaction ends, so no one sees them unclamped.
        """
        if not gains:
            return
        table = UserCategoryAffinity.__table__
        decayed = sql_decayed(
            table.c.affinity_score, table.c.last_updated, self.decay_rate, now
        )
        upsert_rows(
            table,
            [
                {
                    "user_id": user_id,
                    "category_id": category_id,
                    "affinity_score": gain,
                    "last_updated": now,
                }
                for (user_id, category_id), gain in sorted(gains.items())
            ],
            [table.c.user_id, table.c.category_id],
            lambda excluded: {
                "affinity_score": sql_greatest(
                    0.0, sql_least(1.0, decayed + excluded.affinity_score)
                ),
                "last_updated": excluded.last_updated,
            },
        )
        if any(not 0.0 <= gain <= 1.0 for gain in gains.values()):
            score = table.c.affinity_score
            db.session.execute(
                update(table)
                .where(
                    table.c.user_id.in_(sorted({user for user, _ in gains})),
                    (score < 0.0) | (score > 1.0),
                )
                .values(affinity_score=sql_greatest(0.0, sql_least(1.0, score)))
            )

    def _add_popularity(
        self,
        entries: list["VisitorEvent"],
        shares: list[dict[int, float]],
        histories: dict[str, list["RecentTarget"]],
        now: datetime,
    ) -> None:
        """Raise the decayed popularity of each target, and count new visitors.

        Categories gain the same shares as affinities; searches count for no item.
        """
        gains: dict[tuple[str, int], float] = defaultdict(float)
        newcomers: dict[tuple[str, int], set[str]] = defaultdict(set)
        seen_by = {
            user: {(t.target_type, t.target_id) for t in targets}
            for user, targets in histories.items()
        }
        for entry, event_shares in zip(entries, shares, strict=True):
            event = entry.event
            if event.interaction_type == "search":
                continue
            weight = self.aged_weight(event, self.popularity_decay_rate, now)
            if event.target_type in CATALOG_MODELS and event.target_type != "category":
                target = (event.target_type, event.target_id)
                gains[target] += weight
                if target not in seen_by.get(entry.user_id, ()):
                    newcomers[target].add(entry.user_id)
            for category_id, share in event_shares.items():
                gains[("category", category_id)] += weight * share
        if not gains:
            return
        table = ItemPopularity.__table__
        decayed = sql_decayed(
            table.c.score, table.c.last_updated, self.popularity_decay_rate, now
        )
        upsert_rows(
            table,
            [
                {
                    "target_type": target_type,
                    "target_id": target_id,
                    "score": gain,
                    "visitors": len(newcomers[(target_type, target_id)]),
                    "last_updated": now,
                }
                for (target_type, target_id), gain in sorted(gains.items())
            ],
            [table.c.target_type, table.c.target_id],
            lambda excluded: {
                "score": sql_greatest(0.0, decayed + excluded.score),
                "visitors": table.c.visitors + excluded.visitors,
                "last_updated": excluded.last_updated,
            },
        )
        if any(gain < 0 for gain in gains.values()):
            db.session.execute(
                update(table).where(table.c.score < 0.0).values(score=0.0)
            )

    def _add_covisitation(
        self,
        entries: list["VisitorEvent"],
        histories: dict[str, list["RecentTarget"]],
    ) -> None:
        """Count each visitor once for each pair of procedures they now share.

        "Visitors who viewed X also viewed Y": a procedure new to a visitor pairs
        with every procedure in their recent history, in both directions.
        """
        new_by_user: dict[str, set[int]] = defaultdict(set)
        for entry in entries:
            if entry.event.target_type == "procedure":
                new_by_user[entry.user_id].add(entry.event.target_id)
        counts: Counter = Counter()
        for user_id, procedures in new_by_user.items():
            seen = {
                t.target_id for t in histories[user_id] if t.target_type == "procedure"
            }
            new = procedures - seen
            pairs = {(a, b) for a in new for b in seen | new if a != b}
            counts.update(pairs | {(b, a) for a, b in pairs})
        if not counts:
            return
        table = ProcedureCovisitation.__table__
        upsert_rows(
            table,
            [
                {"procedure_id": a, "other_id": b, "visitors": n}
                for (a, b), n in sorted(counts.items())
            ],
            [table.c.procedure_id, table.c.other_id],
            lambda excluded: {"visitors": table.c.visitors + excluded.visitors},
        )

    def _queue_for_personalize(
        self, entries: list["VisitorEvent"], now: datetime
    ) -> None:
        """Put catalog events in the outbox for streaming to AWS Personalize."""
        rows = [
            {
                "user_id": entry.user_id,
                "session_id": entry.session_id,
                "event_type": entry.event.interaction_type,
                "item_id": f"{entry.event.target_type}:{entry.event.target_id}",
                "event_value": self.weights.get(entry.event.interaction_type, 0.0),
                "impression": json.dumps(entry.event.impression[:MAX_IMPRESSION_IDS])
                if entry.event.impression
                else None,
                "occurred_at": entry.event.occurred_at or now,
            }
            for entry in entries
            if entry.event.target_type in CATALOG_MODELS and entry.event.stream
        ]
        if rows:
            db.session.execute(insert(PersonalizeOutbox), rows)

    def sync_personalize_events(
        self, client, max_events: int = 1000, now: datetime | None = None
    ) -> dict[str, int]:
        """Stream queued interactions to Personalize (PutEvents), oldest first.

        Rows are claimed with a token so parallel workers never send one twice,
        and marked sent only after AWS accepted them: an outage loses nothing,
        and the next run delivers the backlog. Stops at the first failure.
        """
        now = now or utcnow()
        outbox = PersonalizeOutbox.__table__
        token = secrets.token_hex(16)
        claimable = (
            outbox.c.sent_at.is_(None)
            & (outbox.c.attempts < OUTBOX_MAX_ATTEMPTS)
            & (
                outbox.c.claimed_at.is_(None)
                | (outbox.c.claimed_at < now - OUTBOX_CLAIM_TIMEOUT)
            )
        )
        oldest = select(outbox.c.id).where(claimable).order_by(outbox.c.id)
        db.session.execute(
            update(outbox)
            .where(outbox.c.id.in_(oldest.limit(max_events)), claimable)
            .values(claim_token=token, claimed_at=now)
        )
        db.session.commit()
        rows = db.session.execute(
            select(outbox).where(outbox.c.claim_token == token).order_by(outbox.c.id)
        ).all()
        sessions: dict[tuple[str, str], list] = defaultdict(list)
        for row in rows:
            sessions[(row.user_id, row.session_id)].append(row)
        sent = 0
        failed = False
        for (user_id, session_id), session_rows in sessions.items():
            for start in range(0, len(session_rows), MAX_EVENTS_PER_CALL):
                chunk = session_rows[start : start + MAX_EVENTS_PER_CALL]
                ids = [row.id for row in chunk]
                events = [
                    personalize_event(
                        str(row.id),
                        row.event_type,
                        row.item_id,
                        row.event_value,
                        as_utc(row.occurred_at),
                        impression=json.loads(row.impression)
                        if row.impression
                        else None,
                    )
                    for row in chunk
                ]
                try:
                    client.put_events(user_id, session_id, events)
                except PersonalizeUnavailable:
                    db.session.execute(
                        update(outbox)
                        .where(outbox.c.id.in_(ids))
                        .values(attempts=outbox.c.attempts + 1)
                    )
                    failed = True
                    break
                db.session.execute(
                    update(outbox).where(outbox.c.id.in_(ids)).values(sent_at=utcnow())
                )
                db.session.commit()
                sent += len(ids)
            if failed:
                break
        # Release what this run claimed but did not send, for the next run.
        db.session.execute(
            update(outbox)
            .where(outbox.c.claim_token == token, outbox.c.sent_at.is_(None))
            .values(claim_token=None, claimed_at=None)
        )
        db.session.commit()
        pending = db.session.scalar(
            select(func.count()).where(outbox.c.sent_at.is_(None))
        )
        return {"sent": sent, "pending": pending, "failed": int(failed)}

    def refresh_statistics(self, now: datetime | None = None) -> dict[str, int]:
        """Rebuild item popularity and co-visitation from the interaction log.

        Exact over the popularity window (incremental updates cap each visitor's
        history); the database does the aggregation. Searches count for no item.
        """
        now = now or self.clock()
        log = UserInteraction.__table__
        since = now - timedelta(days=self.popularity_window_days)
        in_window = (log.c.timestamp >= since) & (log.c.interaction_type != "search")
        weight = self._sql_weight(log.c.interaction_type)
        decayed_weight = weight * func.power(
            self.popularity_decay_rate, sql_days_since(log.c.timestamp, now)
        )
        item_rows = (
            select(
                log.c.target_type,
                log.c.target_id,
                sql_greatest(func.sum(decayed_weight), 0.0),
                func.count(func.distinct(log.c.user_id)),
                sql_time(now),
            )
            .where(in_window, log.c.target_type.in_(("procedure", "doctor", "package")))
            .group_by(log.c.target_type, log.c.target_id)
        )
        shares = category_shares_of_targets()
        category_rows = (
            select(
                literal("category", String),
                shares.c.category_id,
                sql_greatest(func.sum(decayed_weight * shares.c.share), 0.0),
                literal(0),
                sql_time(now),
            )
            .select_from(log)
            .join(
                shares,
                (shares.c.target_type == log.c.target_type)
                & (shares.c.target_id == log.c.target_id),
            )
            .where(in_window)
            .group_by(shares.c.category_id)
        )
        visits = (
            select(log.c.user_id, log.c.target_id)
            .where(in_window, log.c.target_type == "procedure")
            .distinct()
            .subquery()
        )
        other = visits.alias("other")
        pair_rows = (
            select(visits.c.target_id, other.c.target_id, func.count())
            .join(
                other,
                (other.c.user_id == visits.c.user_id)
                & (other.c.target_id != visits.c.target_id),
            )
            .group_by(visits.c.target_id, other.c.target_id)
        )
        popularity = ItemPopularity.__table__
        covisitation = ProcedureCovisitation.__table__
        db.session.execute(delete(popularity))
        db.session.execute(delete(covisitation))
        columns = ["target_type", "target_id", "score", "visitors", "last_updated"]
        for rows in (item_rows, category_rows):
            db.session.execute(popularity.insert().from_select(columns, rows))
        db.session.execute(
            covisitation.insert().from_select(
                ["procedure_id", "other_id", "visitors"], pair_rows
            )
        )
        db.session.commit()
        self._popular_cache.clear()
        return {
            "item_popularity": row_count(popularity),
            "procedure_covisitation": row_count(covisitation),
        }

    def rebuild_affinities(self, now: datetime | None = None) -> int:
        """Recompute every visitor's affinities from the log, in SQL.

        Sum of weight x share x decay^age per (visitor, category), clamped to
        [0, 1]; searches, whose categories come from a live search, are left
        out. For the offline evaluation, which starts from a bare log.
        """
        now = now or self.clock()
        log = UserInteraction.__table__
        shares = category_shares_of_targets()
        aged = (
            self._sql_weight(log.c.interaction_type)
            * shares.c.share
            * func.power(self.decay_rate, sql_days_since(log.c.timestamp, now))
        )
        rows = (
            select(
                log.c.user_id,
                shares.c.category_id,
                sql_greatest(0.0, sql_least(1.0, func.sum(aged))),
                sql_time(now),
            )
            .select_from(log)
            .join(
                shares,
                (shares.c.target_type == log.c.target_type)
                & (shares.c.target_id == log.c.target_id),
            )
            .where(log.c.interaction_type != "search", log.c.timestamp <= now)
            .group_by(log.c.user_id, shares.c.category_id)
        )
        table = UserCategoryAffinity.__table__
        db.session.execute(delete(table))
        db.session.execute(
            table.insert().from_select(
                ["user_id", "category_id", "affinity_score", "last_updated"], rows
            )
        )
        db.session.commit()
        return row_count(table)

    # Affinities

    def get_affinities(
        self, user_id: str, now: datetime | None = None
    ) -> dict[int, float]:
        """Return the visitor's affinity per category, decayed to now."""
        now = now or self.clock()
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

    def decayed(
        self,
        score: float,
        last_updated: datetime,
        now: datetime,
        rate: float | None = None,
    ) -> float:
        """Fade a score by a daily rate (the affinity decay unless given) since then."""
        days = max(0.0, (now - last_updated).total_seconds() / 86400)
        return score * (self.decay_rate if rate is None else rate) ** days

    # Popularity

    def popular_scores(self, target_type: str) -> list[tuple[int, float]]:
        """Items of a type with their popularity decayed to now, best first.

        Read from the precomputed table (never the log) and cached in process for
        a short time; with no data yet, a sensible catalog order stands.
        """
        cached = self._popular_cache.get(target_type)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        model = CATALOG_MODELS[target_type]
        popularity = ItemPopularity.__table__
        decayed = sql_decayed(
            popularity.c.score,
            popularity.c.last_updated,
            self.popularity_decay_rate,
            self.clock(),
        )
        score = func.coalesce(decayed, 0.0)
        statement = (
            select(model.id, score)
            .outerjoin(
                popularity,
                (popularity.c.target_type == target_type)
                & (popularity.c.target_id == model.id),
            )
            .order_by(score.desc(), *catalog_order(target_type))
            .limit(POPULAR_CACHE_SIZE)
        )
        scores = [
            (item_id, float(value)) for item_id, value in db.session.execute(statement)
        ]
        self._popular_cache[target_type] = (
            time.monotonic() + self.popularity_cache_seconds,
            scores,
        )
        return scores

    def popular(
        self, target_type: str, limit: int, exclude: Iterable[int] = ()
    ) -> list[tuple[int, float]]:
        """The most popular items of a type, leaving out those already shown."""
        excluded = set(exclude)
        return [
            (item_id, score)
            for item_id, score in self.popular_scores(target_type)
            if item_id not in excluded
        ][:limit]

    def get_popular_categories(self, limit: int = 6) -> Ranking:
        """Rank categories by decayed interest in them and their procedures."""
        return self._finish("category", None, [], limit)

    def get_popular_procedures(self, limit: int = 6) -> Ranking:
        """Rank procedures by decayed interactions, then by doctors offering them."""
        return self._finish("procedure", None, [], limit)

    def get_popular_doctors(self, limit: int = 9) -> Ranking:
        """Rank doctors by decayed interactions, then by rating and review count."""
        return self._finish("doctor", None, [], limit)

    # Personalized rankings

    def visitor_profile(self, user_id: str | None) -> "VisitorProfile":
        """Read what rankings need about a visitor: two indexed queries."""
        if not user_id:
            return VisitorProfile(None, {}, [])
        recent = self.recent_targets_of({user_id}).get(user_id, [])
        return VisitorProfile(
            user_id,
            self.get_affinities(user_id),
            [(t.target_type, t.target_id) for t in recent],
            frozenset((t.target_type, t.target_id) for t in recent if t.net_weight < 0),
            {
                (t.target_type, t.target_id): t.net_weight
                for t in recent
                if t.net_weight > 0
            },
        )

    def get_personalized_categories(
        self, user_id: str | None, limit: int = 6
    ) -> Ranking:
        """Rank categories by the visitor's decayed affinity; popular ones fill."""
        return self.categories_for(self.visitor_profile(user_id), limit)

    def get_personalized_procedures(
        self, user_id: str | None, limit: int = 6
    ) -> Ranking:
        """Rank procedures by affinity x popularity blended with co-visitation."""
        profile = self.visitor_profile(user_id)
        return self._finish("procedure", profile, self.procedure_scores(profile), limit)

    def get_personalized_doctors(self, user_id: str | None, limit: int = 9) -> Ranking:
        """Rank doctors who perform the visitor's top procedures, by their rating."""
        profile = self.visitor_profile(user_id)
        return self.doctors_for(profile, self.procedure_scores(profile), limit)

    def get_home_sections(
        self, user_id: str | None, sizes: dict[str, int]
    ) -> dict[str, Ranking]:
        """All three home-page rankings, reading the visitor's profile once."""
        profile = self.visitor_profile(user_id)
        procedure_scores = self.procedure_scores(profile)
        return {
            "categories": self.categories_for(profile, sizes["categories"]),
            "procedures": self._finish(
                "procedure", profile, procedure_scores, sizes["procedures"]
            ),
            "doctors": self.doctors_for(profile, procedure_scores, sizes["doctors"]),
        }

    def categories_for(self, profile: "VisitorProfile", limit: int) -> Ranking:
        scored = sorted(
            (
                (category_id, score, "affinity")
                for category_id, score in profile.affinities.items()
                if score >= AFFINITY_FLOOR
            ),
            key=lambda entry: -entry[1],
        )
        return self._finish("category", profile, scored, limit)

    def procedure_scores(
        self, profile: "VisitorProfile"
    ) -> list[tuple[int, float, str]]:
        """The blended local ranking of procedures for one visitor.

        score = (1 - w) * affinity(category) * (0.5 + 0.5 * popularity / max)
              + w * co-visitation with the visitor's recent procedures
              + h * the visitor's own interest in the procedure / their strongest,
        with w = COVISITATION_WEIGHT and h = HISTORY_WEIGHT. Candidates: procedures
        of the visitor's top categories, co-visitation neighbours of what they
        recently saw, and what they recently saw (shoppers come back to it: on the
        Taobao log, h = 0.6 doubles NDCG@10; see BENCHMARKS.md).
        """
        if not profile.user_id:
            return []
        top_categories = [
            category_id
            for category_id, score in sorted(
                profile.affinities.items(), key=lambda entry: -entry[1]
            )
            if score >= AFFINITY_FLOOR
        ][:TOP_CATEGORIES]
        seeds = [
            tid
            for ttype, tid in profile.history
            if ttype == "procedure" and (ttype, tid) not in profile.disliked
        ]
        covisitation = self.covisitation_scores(seeds[:COVISITATION_SEEDS])
        own = {
            tid: weight
            for (ttype, tid), weight in profile.interest.items()
            if ttype == "procedure"
        }
        strongest_own = max(own.values(), default=0.0)
        if not top_categories and not covisitation and not own:
            return []
        popularity = dict(self.popular_scores("procedure"))
        candidates = db.session.execute(
            select(Procedure.id, Procedure.category_id).where(
                Procedure.category_id.in_(top_categories)
                | Procedure.id.in_(list(covisitation))
                | Procedure.id.in_(list(own))
            )
        ).all()
        most_popular = max(
            (popularity.get(pid, 0.0) for pid, _ in candidates), default=0
        )
        weight = self.covisitation_weight
        scored = []
        for procedure_id, category_id in candidates:
            relative_popularity = (
                popularity.get(procedure_id, 0.0) / most_popular if most_popular else 0
            )
            from_affinity = (
                (1 - weight)
                * profile.affinities.get(category_id, 0.0)
                * (0.5 + 0.5 * relative_popularity)
            )
            from_covisitation = weight * covisitation.get(procedure_id, 0.0)
            from_history = (
                self.history_weight * own.get(procedure_id, 0.0) / strongest_own
                if strongest_own
                else 0.0
            )
            score = from_affinity + from_covisitation + from_history
            if score > 0:
                reason = max(
                    ("affinity", from_affinity),
                    ("also_viewed", from_covisitation),
                    ("viewed", from_history),
                    key=lambda part: part[1],
                )[0]
                scored.append((procedure_id, score, reason))
        scored.sort(key=lambda entry: (-entry[1], entry[0]))
        return scored

    def procedures_in_categories(
        self, category_ids: list[int]
    ) -> list[tuple[int, int]]:
        """(procedure, category) pairs of the given categories."""
        return [
            (pid, cid)
            for pid, cid in db.session.execute(
                select(Procedure.id, Procedure.category_id).where(
                    Procedure.category_id.in_(category_ids)
                )
            )
        ]

    def covisitation_scores(
        self, seeds: list[int], per_seed: int = RERANK_CANDIDATES
    ) -> dict[int, float]:
        """Procedures co-visited with the seeds, scored by cosine similarity.

        similarity(a, b) = visitors(a and b) / sqrt(visitors(a) * visitors(b)), so a
        blockbuster does not neighbour everything; recent seeds weigh more.
        Scores are scaled so the best is 1.
        """
        if not seeds:
            return {}
        rows = db.session.execute(
            self._covisitation_query(), {"seeds": list(seeds), "per_seed": per_seed}
        )
        seed_weight = {seed: SEED_RECENCY_DECAY**i for i, seed in enumerate(seeds)}
        totals: dict[int, float] = defaultdict(float)
        for seed, other, value in rows:
            totals[other] += seed_weight[seed] * float(value)
        best = max(totals.values(), default=0.0)
        return {pid: value / best for pid, value in totals.items()} if best else {}

    @functools.cache  # noqa: B019 (one engine per app; built once, reused per page)
    def _covisitation_query(self) -> Select:
        """The statement behind covisitation_scores, its values as parameters."""
        pairs = ProcedureCovisitation.__table__
        rank = (
            func.row_number()
            .over(partition_by=pairs.c.procedure_id, order_by=pairs.c.visitors.desc())
            .label("rank")
        )
        nearest = (
            select(pairs.c.procedure_id, pairs.c.other_id, pairs.c.visitors, rank)
            .where(pairs.c.procedure_id.in_(bindparam("seeds", expanding=True)))
            .subquery()
        )
        seed_stats = ItemPopularity.__table__.alias("seed_stats")
        other_stats = ItemPopularity.__table__.alias("other_stats")
        # As floats: the product of two visitor counts overflows a 32-bit integer
        # on PostgreSQL once items have tens of thousands of visitors.
        similarity = nearest.c.visitors / func.sqrt(
            cast(sql_greatest(func.coalesce(seed_stats.c.visitors, 1), 1), Float)
            * cast(sql_greatest(func.coalesce(other_stats.c.visitors, 1), 1), Float)
        )
        return (
            select(nearest.c.procedure_id, nearest.c.other_id, similarity)
            .outerjoin(
                seed_stats,
                (seed_stats.c.target_type == "procedure")
                & (seed_stats.c.target_id == nearest.c.procedure_id),
            )
            .outerjoin(
                other_stats,
                (other_stats.c.target_type == "procedure")
                & (other_stats.c.target_id == nearest.c.other_id),
            )
            .where(nearest.c.rank <= bindparam("per_seed"))
        )

    def doctors_for(
        self,
        profile: "VisitorProfile",
        procedure_scores: list[tuple[int, float, str]],
        limit: int,
    ) -> Ranking:
        """Score doctors by the visitor's top procedures they perform, x rating / 5."""
        top = {pid: score for pid, score, _ in procedure_scores[:TOP_PROCEDURES]}
        scored: dict[int, float] = defaultdict(float)
        if top:
            rows = db.session.execute(
                select(
                    doctor_procedures.c.doctor_id,
                    doctor_procedures.c.procedure_id,
                    Doctor.rating,
                )
                .join(Doctor, Doctor.id == doctor_procedures.c.doctor_id)
                .where(doctor_procedures.c.procedure_id.in_(list(top)))
            )
            for doctor_id, procedure_id, rating in rows:
                scored[doctor_id] += top[procedure_id] * float(rating) / 5
        personal = sorted(
            ((did, score, "affinity") for did, score in scored.items()),
            key=lambda entry: (-entry[1], entry[0]),
        )
        return self._finish("doctor", profile, personal, limit)

    def get_similar_procedures(self, procedure_id: int, limit: int = 6) -> Ranking:
        """Procedures visitors of this one also viewed; same-category popular fill."""
        similar = self.reranker.similar_items(f"procedure:{procedure_id}", limit + 1)
        if similar:
            ids = [
                (int(item_id.split(":", 1)[1]), score, "personalize")
                for item_id, score in similar
                if item_id.startswith("procedure:")
                and item_id != f"procedure:{procedure_id}"
            ]
            if len(ids) >= limit:
                return Ranking(self._load("procedure", ids[:limit]), "personalize")
        covisited = sorted(
            (
                (pid, score, "also_viewed")
                for pid, score in self.covisitation_scores([procedure_id]).items()
                if pid != procedure_id
            ),
            key=lambda entry: (-entry[1], entry[0]),
        )[:limit]
        shown = {procedure_id} | {pid for pid, _, _ in covisited}
        its_category = (
            select(Procedure.category_id)
            .where(Procedure.id == procedure_id)
            .scalar_subquery()
        )
        same_category = set(
            db.session.scalars(
                select(Procedure.id).where(Procedure.category_id == its_category)
            )
        )
        popular = self.popular("procedure", POPULAR_CACHE_SIZE, exclude=shown)
        fill = [(p, s, "same_category") for p, s in popular if p in same_category]
        fill += [(p, s, "popular") for p, s in popular if p not in same_category]
        items = (covisited + fill)[:limit]
        source = ranking_source(len(covisited), limit)
        return Ranking(self._load("procedure", items), source)

    def _finish(
        self,
        target_type: str,
        profile: "VisitorProfile | None",
        personal: list[tuple[int, float, str]],
        limit: int,
    ) -> Ranking:
        """Fill with popular items not already shown, re-rank, load the items.

        Fallbacks fill, never replace: every section gets its full count. Items
        the visitor disliked go last, and only when nothing else is left.
        """
        user_id = profile.user_id if profile else None
        disliked = {
            item_id
            for kind, item_id in (profile.disliked if profile else ())
            if kind == target_type
        }
        personal = [entry for entry in personal if entry[0] not in disliked]
        pool = (
            max(limit, RERANK_CANDIDATES)
            if personal and self.reranker.enabled
            else limit
        )
        candidates = personal[:pool]
        shown = {item_id for item_id, _, _ in candidates} | disliked
        candidates += [
            (item_id, score, "popular")
            for item_id, score in self.popular(
                target_type, pool - len(candidates), exclude=shown
            )
        ]
        source = ranking_source(len(personal), limit)
        if personal and self.reranker.enabled:
            ranked = self.reranker.rerank(
                user_id, [f"{target_type}:{item_id}" for item_id, _, _ in candidates]
            )
            if ranked is not None:
                candidates = reorder(candidates, target_type, ranked)
                source = "personalize"
        candidates += [(item_id, 0.0, "disliked") for item_id in sorted(disliked)]
        return Ranking(self._load(target_type, candidates[:limit]), source)

    def _load(
        self, target_type: str, entries: list[tuple[int, float, str]]
    ) -> list[RankedItem]:
        """Fetch the items of a ranking in one query, keeping its order."""
        model = CATALOG_MODELS[target_type]
        ids = [item_id for item_id, _, _ in entries]
        items = {
            item.id: item
            for item in db.session.scalars(select(model).where(model.id.in_(ids)))
        }
        return [
            RankedItem(items[item_id], round(score, 6), reason)
            for item_id, score, reason in entries
            if item_id in items
        ]

    # Privacy

    def forget_visitor(self, user_ids: Iterable[str]) -> dict[str, int]:
        """Delete every interaction and affinity of these visitor ids; count them.

        Events still waiting for Personalize go too: erasure reaches the outbox.
        """
        ids = sorted(set(user_ids))
        interactions = db.session.execute(
            delete(UserInteraction).where(UserInteraction.user_id.in_(ids))
        ).rowcount
        affinities = db.session.execute(
            delete(UserCategoryAffinity).where(UserCategoryAffinity.user_id.in_(ids))
        ).rowcount
        db.session.execute(
            delete(PersonalizeOutbox).where(PersonalizeOutbox.user_id.in_(ids))
        )
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

    def delivered_events(self, cutoff: datetime) -> Select:
        """Select outbox rows delivered to Personalize before the cutoff."""
        return (
            select(PersonalizeOutbox.id)
            .where(PersonalizeOutbox.sent_at < cutoff)
            .order_by(PersonalizeOutbox.id)
        )

    def faded_affinities(self, now: datetime) -> Select:
        """Select the ids of affinities whose decayed score fell below the floor.

        The decay is applied in SQL the same way reads apply it.
        """
        table = UserCategoryAffinity.__table__
        decayed = sql_decayed(
            table.c.affinity_score, table.c.last_updated, self.decay_rate, now
        )
        return select(table.c.id).where(decayed < AFFINITY_FLOOR).order_by(table.c.id)

    def count(self, ids: Select) -> int:
        """Count the rows a selection of ids names."""
        return db.session.scalar(select(func.count()).select_from(ids.subquery()))

    def delete_in_batches(self, model, ids: Select, batch_size: int) -> Iterator[int]:
        """Delete the selected rows batch by batch, each in its own transaction.

        Short transactions keep the site serving while a large backlog is removed;
        yields how many rows each batch deleted.
        """
        key = ids.selected_columns[0]
        while True:
            batch = ids.limit(batch_size).subquery()
            deleted = db.session.execute(
                delete(model).where(key.in_(select(*batch.c)))
            ).rowcount
            db.session.commit()
            if not deleted:
                return
            yield deleted
