"""What rankings read instead of the interaction log: item popularity, procedure
co-visitation and each visitor's category affinities.

Each is kept up to date incrementally as interactions are recorded (Python works
out the gains, one upsert applies them) and can be rebuilt exactly from the log in
SQL. The two versions of each rule sit side by side, and tests feed both the same
events (tests/test_statistics.py).
"""

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from sqlalchemy import (
    Float,
    String,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal,
    select,
    update,
)

from models import (
    ItemPopularity,
    Procedure,
    ProcedureCovisitation,
    UserCategoryAffinity,
    UserInteraction,
    as_utc,
    greatest,
    least,
    sql_days_since,
    sql_time,
    upsert_rows,
)
from personalization.events import Interaction, ItemKey, VisitorInteraction
from personalization.items import MODELS, catalog_order, category_shares_sql
from personalization.settings import Settings

# Kinds whose popularity is counted per item; categories gain shares instead.
COUNTED_KINDS = ("procedure", "doctor", "package")


# Rules shared by every statistic, each in Python and in SQL.


def decayed(score: float, last_updated: datetime, now: datetime, rate: float) -> float:
    """Fade a score by a daily rate since it was last updated."""
    days = max(0.0, (now - as_utc(last_updated)).total_seconds() / 86400)
    return score * rate**days


def sql_decayed(score_column, updated_column, rate: float, now: datetime):
    """SQL twin of decayed: a stored score faded by `rate` per day since then."""
    return score_column * func.power(rate, sql_days_since(updated_column, now))


def aged_weight(
    weights: Mapping[str, float], interaction: Interaction, rate: float, now: datetime
) -> float:
    """An interaction's weight, faded by its age (webhook events can be old)."""
    weight = weights.get(interaction.type, 0.0)
    if interaction.occurred_at is None:
        return weight
    return decayed(weight, interaction.occurred_at, now, rate)


def sql_weight(weights: Mapping[str, float], type_column):
    """SQL twin of weights.get(type, 0): the weight table as a CASE."""
    return case(*((type_column == kind, w) for kind, w in weights.items()), else_=0.0)


def sql_aged_weight(weights, type_column, time_column, rate: float, now: datetime):
    """SQL twin of aged_weight, over the interaction log's columns."""
    return sql_weight(weights, type_column) * func.power(
        rate, sql_days_since(time_column, now)
    )


def with_category_shares(log, shares):
    """The interaction log joined to the categories each row's item counts for."""
    return log.join(
        shares,
        (shares.c.target_type == log.c.target_type)
        & (shares.c.target_id == log.c.target_id),
    )


class Affinity:
    """Each visitor's interest per category: new = clamp(old x decay^days + gain)."""

    def __init__(self, session, settings: Settings, clock: Callable[[], datetime]):
        self.session = session
        self.settings = settings
        self.clock = clock

    def of_visitor(self, visitor_id: str, now: datetime | None = None) -> dict:
        """The visitor's affinity per category, decayed to now."""
        now = now or self.clock()
        rows = self.session.execute(
            select(
                UserCategoryAffinity.category_id,
                UserCategoryAffinity.affinity_score,
                UserCategoryAffinity.last_updated,
            ).where(UserCategoryAffinity.user_id == visitor_id)
        )
        rate = self.settings.affinity_decay_rate
        return {
            category_id: decayed(score, updated, now, rate)
            for category_id, score, updated in rows
        }

    def categories_of(self, visitor_ids: set[str]) -> set[tuple[str, int]]:
        """The (visitor, category) pairs these visitors have an interest score in."""
        if not visitor_ids:
            return set()
        table = UserCategoryAffinity.__table__
        rows = self.session.execute(
            select(table.c.user_id, table.c.category_id).where(
                table.c.user_id.in_(sorted(visitor_ids))
            )
        )
        # Plain tuples: the aggregator looks up a pair per interaction, and a
        # Row compares itself to a tuple in Python, a tuple in C.
        return {(visitor_id, category_id) for visitor_id, category_id in rows}

    def add(
        self,
        entries: list[VisitorInteraction],
        shares: list[dict[int, float]],
        now: datetime,
    ) -> None:
        """Sum each visitor's category gains, then apply them all in one upsert.

        The database computes the new score from the row it locks, so concurrent
        requests cannot lose an update. New rows take the raw gain and are clamped
        before the transaction ends, so no one sees them unclamped.
        """
        rate = self.settings.affinity_decay_rate
        gains: dict[tuple[str, int], float] = defaultdict(float)
        for entry, entry_shares in zip(entries, shares, strict=True):
            weights = self.settings.interaction_weights
            weight = aged_weight(weights, entry.interaction, rate, now)
            for category_id, share in entry_shares.items():
                gains[(entry.visitor_id, category_id)] += weight * share
        if not gains:
            return
        table = UserCategoryAffinity.__table__
        score = table.c.affinity_score
        old = sql_decayed(score, table.c.last_updated, rate, now)
        upsert_rows(
            self.session,
            table,
            [
                {
                    "user_id": visitor_id,
                    "category_id": category_id,
                    "affinity_score": gain,
                    "last_updated": now,
                }
                for (visitor_id, category_id), gain in sorted(gains.items())
            ],
            [table.c.user_id, table.c.category_id],
            lambda new: {
                "affinity_score": greatest(0.0, least(1.0, old + new.affinity_score)),
                "last_updated": new.last_updated,
            },
        )
        if any(not 0.0 <= gain <= 1.0 for gain in gains.values()):
            self.session.execute(
                update(table)
                .where(
                    table.c.user_id.in_(sorted({visitor for visitor, _ in gains})),
                    (score < 0.0) | (score > 1.0),
                )
                .values(affinity_score=greatest(0.0, least(1.0, score)))
            )

    def rebuild(self, now: datetime) -> None:
        """SQL twin of add: every visitor's affinities recomputed from the log.

        Sum of weight x share x decay^age per (visitor, category), clamped to
        [0, 1]. Searches, whose categories come from a live search, are left out.
        For the offline evaluation, which starts from a bare log.
        """
        log = UserInteraction.__table__
        shares = category_shares_sql()
        aged = shares.c.share * sql_aged_weight(
            self.settings.interaction_weights,
            log.c.interaction_type,
            log.c.timestamp,
            self.settings.affinity_decay_rate,
            now,
        )
        rows = (
            select(
                log.c.user_id,
                shares.c.category_id,
                greatest(0.0, least(1.0, func.sum(aged))),
                sql_time(now),
            )
            .select_from(with_category_shares(log, shares))
            .where(log.c.interaction_type != "search", log.c.timestamp <= now)
            .group_by(log.c.user_id, shares.c.category_id)
        )
        table = UserCategoryAffinity.__table__
        self.session.execute(delete(table))
        self.session.execute(
            table.insert().from_select(
                ["user_id", "category_id", "affinity_score", "last_updated"], rows
            )
        )

    def has_faded(self, now: datetime):
        """A condition on the affinity table: the decayed score fell below the
        floor, where it no longer counts for anything."""
        table = UserCategoryAffinity.__table__
        score = sql_decayed(
            table.c.affinity_score,
            table.c.last_updated,
            self.settings.affinity_decay_rate,
            now,
        )
        return score < self.settings.affinity_floor


class Popularity:
    """Decayed interest in each item and category, and its distinct visitors."""

    def __init__(self, session, settings: Settings, clock: Callable[[], datetime]):
        self.session = session
        self.settings = settings
        self.clock = clock
        # kind -> (expires at, [(id, score), ...] best first)
        self._cache: dict[str, tuple[float, list[tuple[int, float]]]] = {}

    def scores(self, kind: str) -> list[tuple[int, float]]:
        """Items of a kind with their popularity decayed to now, best first.

        Read from the precomputed table (never the log) and cached in process for
        a short time; with no data yet, the catalog's own order stands.
        """
        cached = self._cache.get(kind)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        model = MODELS[kind]
        table = ItemPopularity.__table__
        score = self._score(table)
        statement = (
            select(model.id, score)
            .outerjoin(
                table,
                (table.c.target_type == kind) & (table.c.target_id == model.id),
            )
            .order_by(score.desc(), *catalog_order(kind))
            .limit(self.settings.popular_list_size)
        )
        found = [
            (item_id, float(value))
            for item_id, value in self.session.execute(statement)
        ]
        expires = time.monotonic() + self.settings.popularity_cache_seconds
        self._cache[kind] = (expires, found)
        return found

    def by_category(self) -> dict[int, list[tuple[int, float]]]:
        """Each category's procedures, every one, with their popularity decayed
        to now, best first; cached as `scores` is."""
        cached = self._cache.get("by category")
        if cached and cached[0] > time.monotonic():
            return cached[1]
        table = ItemPopularity.__table__
        statement = (
            select(Procedure.category_id, Procedure.id, self._score(table))
            .outerjoin(
                table,
                (table.c.target_type == "procedure")
                & (table.c.target_id == Procedure.id),
            )
            .order_by(Procedure.category_id, self._score(table).desc(), Procedure.id)
        )
        found: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for category_id, procedure_id, score in self.session.execute(statement):
            found[category_id].append((procedure_id, float(score)))
        expires = time.monotonic() + self.settings.popularity_cache_seconds
        self._cache["by category"] = (expires, dict(found))
        return dict(found)

    def _score(self, table):
        """An item's popularity decayed to now; 0 below the crowd threshold (an
        item's popularity is nobody's business until MIN_VISITORS have it)."""
        decayed_score = sql_decayed(
            table.c.score,
            table.c.last_updated,
            self.settings.popularity_decay_rate,
            self.clock(),
        )
        crowd = table.c.visitors >= self.settings.min_visitors
        return func.coalesce(case((crowd, decayed_score), else_=0.0), 0.0)

    def clear_cache(self) -> None:
        self._cache.clear()

    def size(self) -> int:
        """Rows in the table: items and categories with any popularity."""
        return self.session.scalar(select(func.count()).select_from(ItemPopularity))

    def add(
        self,
        entries: list[VisitorInteraction],
        shares: list[dict[int, float]],
        seen: Mapping[str, set[ItemKey]],
        seen_categories: set[tuple[str, int]],
        now: datetime,
    ) -> None:
        """Raise the decayed popularity of each item, and count new visitors.

        `seen` holds each visitor's recent items and `seen_categories` the
        categories they already have an interest in: a visitor counts once per
        item and per category. Categories gain the same shares as affinities;
        searches count for nothing.
        """
        rate = self.settings.popularity_decay_rate
        gains: dict[ItemKey, float] = defaultdict(float)
        newcomers: dict[ItemKey, set[str]] = defaultdict(set)
        for entry, entry_shares in zip(entries, shares, strict=True):
            interaction = entry.interaction
            if interaction.type == "search":
                continue
            weights = self.settings.interaction_weights
            weight = aged_weight(weights, interaction, rate, now)
            item = interaction.item
            if item and item.kind in COUNTED_KINDS:
                gains[item] += weight
                if item not in seen.get(entry.visitor_id, ()):
                    newcomers[item].add(entry.visitor_id)
            for category_id, share in entry_shares.items():
                category = ItemKey("category", category_id)
                gains[category] += weight * share
                if (entry.visitor_id, category_id) not in seen_categories:
                    newcomers[category].add(entry.visitor_id)
        if not gains:
            return
        table = ItemPopularity.__table__
        old = sql_decayed(table.c.score, table.c.last_updated, rate, now)
        upsert_rows(
            self.session,
            table,
            [
                {
                    "target_type": item.kind,
                    "target_id": item.id,
                    "score": gain,
                    "visitors": len(newcomers[item]),
                    "last_updated": now,
                }
                for item, gain in sorted(gains.items())
            ],
            [table.c.target_type, table.c.target_id],
            lambda new: {
                "score": greatest(0.0, old + new.score),
                "visitors": table.c.visitors + new.visitors,
                "last_updated": new.last_updated,
            },
        )
        if any(gain < 0 for gain in gains.values()):
            self.session.execute(
                update(table).where(table.c.score < 0.0).values(score=0.0)
            )

    def rebuild(self, now: datetime) -> None:
        """SQL twin of add: popularity recomputed from the log's window."""
        log = UserInteraction.__table__
        since = now - timedelta(days=self.settings.popularity_window_days)
        in_window = (log.c.timestamp >= since) & (log.c.interaction_type != "search")
        weight = sql_aged_weight(
            self.settings.interaction_weights,
            log.c.interaction_type,
            log.c.timestamp,
            self.settings.popularity_decay_rate,
            now,
        )
        item_rows = (
            select(
                log.c.target_type,
                log.c.target_id,
                greatest(func.sum(weight), 0.0),
                func.count(func.distinct(log.c.user_id)),
                sql_time(now),
            )
            .where(in_window, log.c.target_type.in_(COUNTED_KINDS))
            .group_by(log.c.target_type, log.c.target_id)
        )
        shares = category_shares_sql()
        category_rows = (
            select(
                literal("category", String),
                shares.c.category_id,
                greatest(func.sum(weight * shares.c.share), 0.0),
                func.count(func.distinct(log.c.user_id)),
                sql_time(now),
            )
            .select_from(with_category_shares(log, shares))
            .where(in_window)
            .group_by(shares.c.category_id)
        )
        table = ItemPopularity.__table__
        self.session.execute(delete(table))
        columns = ["target_type", "target_id", "score", "visitors", "last_updated"]
        for rows in (item_rows, category_rows):
            self.session.execute(table.insert().from_select(columns, rows))


class CoVisitation:
    """How many visitors interacted with both of two procedures."""

    def __init__(self, session, settings: Settings):
        self.session = session
        self.settings = settings
        self._neighbours_statement = None

    def add(
        self, entries: list[VisitorInteraction], seen: Mapping[str, set[ItemKey]]
    ) -> None:
        """Count each visitor once for each pair of procedures they now share.

        "Visitors who viewed X also viewed Y": a procedure new to a visitor pairs
        with every procedure in their recent history, in both directions.
        """
        new_by_visitor: dict[str, set[int]] = defaultdict(set)
        for entry in entries:
            item = entry.interaction.item
            if item and item.kind == "procedure":
                new_by_visitor[entry.visitor_id].add(item.id)
        counts: Counter = Counter()
        for visitor_id, procedures in new_by_visitor.items():
            before = {
                item.id for item in seen.get(visitor_id, ()) if item.kind == "procedure"
            }
            new = procedures - before
            pairs = {(a, b) for a in new for b in before | new if a != b}
            counts.update(pairs | {(b, a) for a, b in pairs})
        if not counts:
            return
        table = ProcedureCovisitation.__table__
        upsert_rows(
            self.session,
            table,
            [
                {"procedure_id": a, "other_id": b, "visitors": n}
                for (a, b), n in sorted(counts.items())
            ],
            [table.c.procedure_id, table.c.other_id],
            lambda new: {"visitors": table.c.visitors + new.visitors},
        )

    def rebuild(self, now: datetime) -> None:
        """SQL twin of add: pairs counted from the log's window."""
        log = UserInteraction.__table__
        since = now - timedelta(days=self.settings.popularity_window_days)
        visits = (
            select(log.c.user_id, log.c.target_id)
            .where(
                log.c.timestamp >= since,
                log.c.interaction_type != "search",
                log.c.target_type == "procedure",
            )
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
        table = ProcedureCovisitation.__table__
        self.session.execute(delete(table))
        self.session.execute(
            table.insert().from_select(
                ["procedure_id", "other_id", "visitors"], pair_rows
            )
        )

    def size(self) -> int:
        """Rows in the table: ordered pairs of co-visited procedures."""
        return self.session.scalar(
            select(func.count()).select_from(ProcedureCovisitation)
        )

    def neighbours(self, seeds: list[int]) -> dict[int, float]:
        """Procedures co-visited with the seeds, scored by cosine similarity.

        similarity(a, b) = visitors(a and b) / sqrt(visitors(a) * visitors(b)), so a
        blockbuster does not neighbour everything; earlier seeds (the more recent)
        weigh more. Scores are scaled so the best is 1.
        """
        return self.neighbours_explained(seeds)[0]

    def neighbours_explained(
        self, seeds: list[int]
    ) -> tuple[dict[int, float], dict[int, int]]:
        """neighbours(seeds), and for each neighbour the seed that gave it most
        (what "because you viewed ..." names)."""
        if not seeds:
            return {}, {}
        rows = self.session.execute(
            self._neighbours(),
            {
                "seeds": list(seeds),
                "per_seed": self.settings.covisitation_neighbours,
                "min_visitors": self.settings.min_visitors,
            },
        )
        decay = self.settings.seed_recency_decay
        seed_weight = {seed: decay**i for i, seed in enumerate(seeds)}
        totals: dict[int, float] = defaultdict(float)
        # Per neighbour: (its largest part, the seed's place in the list, negated
        # so ties go to the more recent seed) and that seed.
        strongest: dict[int, tuple[float, int, int]] = {}
        for seed, other, value in rows:
            part = seed_weight[seed] * float(value)
            totals[other] += part
            candidate = (part, -seeds.index(seed), seed)
            strongest[other] = max(strongest.get(other, candidate), candidate)
        best = max(totals.values(), default=0.0)
        if not best:
            return {}, {}
        return (
            {pid: value / best for pid, value in totals.items()},
            {pid: seed for pid, (_, _, seed) in strongest.items()},
        )

    def _neighbours(self):
        """The statement behind neighbours, built once: its values are parameters.

        Composing it cost more than running it, on every page view.
        """
        if self._neighbours_statement is not None:
            return self._neighbours_statement
        pairs = ProcedureCovisitation.__table__
        rank = (
            func.row_number()
            .over(partition_by=pairs.c.procedure_id, order_by=pairs.c.visitors.desc())
            .label("rank")
        )
        nearest = (
            select(pairs.c.procedure_id, pairs.c.other_id, pairs.c.visitors, rank)
            .where(
                pairs.c.procedure_id.in_(bindparam("seeds", expanding=True)),
                # A pair seen by fewer people would reveal what one of them viewed.
                pairs.c.visitors >= bindparam("min_visitors"),
            )
            .subquery()
        )
        seed_stats = ItemPopularity.__table__.alias("seed_stats")
        other_stats = ItemPopularity.__table__.alias("other_stats")
        # As floats: the product of two visitor counts overflows a 32-bit integer
        # on PostgreSQL once items have tens of thousands of visitors.
        similarity = nearest.c.visitors / func.sqrt(
            cast(greatest(func.coalesce(seed_stats.c.visitors, 1), 1), Float)
            * cast(greatest(func.coalesce(other_stats.c.visitors, 1), 1), Float)
        )
        self._neighbours_statement = (
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
        return self._neighbours_statement
