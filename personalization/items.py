"""The catalog as the engine sees it: which items exist, the categories each one
counts for, the order of a catalog with no data yet, and loading items for a page."""

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

from cachetools import TTLCache
from sqlalchemy import String, bindparam, func, literal, or_, select, union_all

from models import (
    Category,
    Doctor,
    Package,
    Procedure,
    doctor_procedures,
    doctor_rating_score,
    package_procedures,
    top_rated_order,
)
from personalization.events import ItemKey, is_decimal

# The model of each kind, in the order of ITEM_KINDS.
MODELS = {
    "procedure": Procedure,
    "category": Category,
    "doctor": Doctor,
    "package": Package,
}
# Items a process remembers to exist, and for how long (Items.existing).
KNOWN_ITEMS = 100_000
KNOWN_ITEM_SECONDS = 60
# How a doctor or a package reaches the categories: through its procedures.
PROCEDURE_LINKS = {
    "doctor": doctor_procedures.c.doctor_id,
    "package": package_procedures.c.package_id,
}


def split_evenly(weight: float, category_ids: Iterable[int]) -> dict[int, float]:
    """Share a weight among categories in proportion to how often each appears."""
    counts = Counter(category_ids)
    total = sum(counts.values())
    return {cid: weight * n / total for cid, n in counts.items()} if total else {}


def catalog_order(kind: str) -> list:
    """The order of a catalog with no interactions yet: curated, then by merit."""
    if kind == "category":
        return [Category.id]
    if kind == "procedure":
        offered_by = (
            select(func.count())
            .where(doctor_procedures.c.procedure_id == Procedure.id)
            .scalar_subquery()
        )
        return [offered_by.desc(), Procedure.name]
    if kind == "doctor":
        return top_rated_order()
    return [Package.price, Package.id]


class Items:
    """Catalog lookups the engine makes, batched by kind."""

    def __init__(self, session, timer: Callable[[], float] = time.monotonic):
        """`timer` measures how long an item stays known (tests pass a fake)."""
        self.session = session
        # Statements built once (their values are parameters): composing them
        # cost more than running them, several times a page.
        self._load = {
            kind: select(model).where(model.id.in_(bindparam("ids", expanding=True)))
            for kind, model in MODELS.items()
        }
        self._doctors_performing = (
            select(
                doctor_procedures.c.doctor_id,
                doctor_procedures.c.procedure_id,
                doctor_rating_score(),
            )
            .join(Doctor, Doctor.id == doctor_procedures.c.doctor_id)
            .where(
                doctor_procedures.c.procedure_id.in_(
                    bindparam("procedures", expanding=True)
                )
            )
        )
        self._doctors_in = (
            select(Doctor.id)
            .where(Doctor.city == bindparam("city"))
            .order_by(*top_rated_order())
        )
        # Items found to exist: an item deleted since stays "known" this long.
        self._known: TTLCache = TTLCache(KNOWN_ITEMS, KNOWN_ITEM_SECONDS, timer)
        self._known_lock = threading.Lock()

    def existing(self, keys: Iterable[ItemKey]) -> set[ItemKey]:
        """The keys that name an item in the catalog: those this process found
        in the last KNOWN_ITEM_SECONDS, and one query per kind for the others
        (every tracking request asks; the catalog seldom changes)."""
        keys = set(keys)
        with self._known_lock:
            found = {key for key in keys if key in self._known}
        wanted: dict[str, set[int]] = defaultdict(set)
        for key in keys - found:
            wanted[key.kind].add(key.id)
        looked_up = {
            ItemKey(kind, item_id)
            for kind, ids in wanted.items()
            for item_id in self.session.scalars(
                select(MODELS[kind].id).where(MODELS[kind].id.in_(ids))
            )
        }
        # Only what was just read: storing a known key again would restart its
        # time, so an item tracked all day would never be looked up again and
        # would stay "existing" after it was deleted.
        if looked_up:
            with self._known_lock:
                self._known.update(dict.fromkeys(looked_up, True))
        return found | looked_up

    def load(self, kind: str, ids: Iterable[int]) -> dict[int, object]:
        """The catalog rows of these ids, by id, in one query."""
        rows = self.session.scalars(self._load[kind], {"ids": list(ids)})
        return {item.id: item for item in rows}

    def doctors_in(self, city: str) -> list[int]:
        """The doctors practising in a city, top rated first."""
        return list(self.session.scalars(self._doctors_in, {"city": city}))

    # Candidates the rankings draw from

    def procedure_candidates(
        self, category_ids: Iterable[int], procedure_ids: Iterable[int]
    ) -> dict[int, int]:
        """The procedures of these categories and these procedures, each with its
        category, in one query."""
        return dict(
            self.session.execute(
                select(Procedure.id, Procedure.category_id).where(
                    Procedure.category_id.in_(list(category_ids))
                    | Procedure.id.in_(list(procedure_ids))
                )
            ).all()
        )

    def same_category(self, procedure_id: int) -> set[int]:
        """The procedures of this one's category, itself included (empty: unknown)."""
        its_category = (
            select(Procedure.category_id)
            .where(Procedure.id == procedure_id)
            .scalar_subquery()
        )
        return set(
            self.session.scalars(
                select(Procedure.id).where(Procedure.category_id == its_category)
            )
        )

    def doctors_performing(
        self, procedure_ids: Iterable[int]
    ) -> list[tuple[int, int, float]]:
        """(doctor, procedure, rating) for every doctor performing these
        procedures; the rating is the Bayesian average "top rated" uses."""
        rows = self.session.execute(
            self._doctors_performing, {"procedures": list(procedure_ids)}
        )
        return [
            (doctor, procedure, float(rating)) for doctor, procedure, rating in rows
        ]

    # References from other systems

    def resolve(self, refs: Iterable[str]) -> dict[str, ItemKey]:
        """Map references to catalog items: "procedure:12", "procedure:botox", or a
        bare slug (the first kind that has it). Unknown references are left out."""
        refs = set(refs)
        wanted: dict[str, set[str]] = defaultdict(set)
        bare: set[str] = set()
        for ref in refs:
            kind, _, key = ref.partition(":")
            if key and kind in MODELS:
                wanted[kind].add(key)
            else:
                bare.add(ref)
        found: dict[tuple[str, str], int] = {}
        for kind, model in MODELS.items():
            keys = wanted[kind] | bare
            if not keys:
                continue
            ids = [int(k) for k in keys if is_decimal(k) and len(k) < 10]
            rows = self.session.execute(
                select(model.id, model.slug).where(
                    or_(model.id.in_(ids), model.slug.in_(sorted(keys)))
                )
            )
            for item_id, slug in rows:
                found[(kind, str(item_id))] = item_id
                found[(kind, slug)] = item_id
        resolved = {}
        for ref in refs:
            kind, _, key = ref.partition(":")
            if key and kind in MODELS:
                if (kind, key) in found:
                    resolved[ref] = ItemKey(kind, found[(kind, key)])
            elif not is_decimal(ref):
                for kind in MODELS:
                    if (kind, ref) in found:
                        resolved[ref] = ItemKey(kind, found[(kind, ref)])
                        break
        return resolved

    # Which categories an item counts for: the Python rule, then its SQL twin.

    def category_shares(
        self, keys: Iterable[ItemKey]
    ) -> dict[ItemKey, dict[int, float]]:
        """For each item, its categories as fractions summing to 1.

        A procedure counts for its category; a doctor or a package for the
        categories of their procedures, in proportion, so one click weighs the same
        whatever its target. The SQL twin is `category_shares_sql`.
        """
        by_kind: dict[str, set[int]] = defaultdict(set)
        for key in keys:
            by_kind[key.kind].add(key.id)
        found: dict[ItemKey, list[int]] = defaultdict(list)
        for category_id in by_kind.get("category", ()):
            found[ItemKey("category", category_id)].append(category_id)
        queries = {
            "procedure": select(Procedure.id, Procedure.category_id).where(
                Procedure.id.in_(by_kind.get("procedure", ()))
            ),
        }
        for kind, link in PROCEDURE_LINKS.items():
            queries[kind] = (
                select(link, Procedure.category_id)
                .join(Procedure, Procedure.id == link.table.c.procedure_id)
                .where(link.in_(by_kind.get(kind, ())))
            )
        for kind, query in queries.items():
            if by_kind.get(kind):
                for item_id, category_id in self.session.execute(query):
                    found[ItemKey(kind, item_id)].append(category_id)
        return {key: split_evenly(1.0, categories) for key, categories in found.items()}


def category_shares_sql():
    """Every catalog item's categories, as (kind, id, category, share) rows.

    The SQL twin of Items.category_shares, for rebuilding statistics in the
    database: the same rule, the same fractions.
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
    for kind, link in PROCEDURE_LINKS.items():
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
                literal(kind, String),
                counts.c.target_id,
                counts.c.category_id,
                counts.c.n * 1.0 / totals.c.total,
            ).join(totals, totals.c.target_id == counts.c.target_id)
        )
    return union_all(*parts).subquery()
