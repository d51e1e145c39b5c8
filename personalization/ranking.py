"""Page sections: ask the served recommender for a list (it drops what the visitor
excluded, fills from popular and, with Personalize, re-ranks), put what the visitor
disliked last, put doctors of the visitor's chosen city first, load the catalog
items the page shows and say why each is there."""

import secrets
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from personalization.events import ItemKey
from personalization.items import Items
from personalization.profiles import VisitorProfile, anonymous
from personalization.recommenders import (
    ENGINE,
    FALLBACK,
    PERSONALIZE,
    Recommender,
    Scored,
    is_remote,
    non_increasing,
)

# Kinds of item a "recently viewed" strip shows.
VIEWABLE_KINDS = ("procedure", "doctor", "package")
# How many doctors a section considers before putting the visitor's city first.
REGIONAL_POOL = 60


@dataclass(frozen=True)
class RankedItem:
    """One catalog item in a ranking, with the score that placed it and why."""

    item: Any
    score: float
    reason: str
    # The item that led to it (see Scored.because), loaded; None if none.
    because: Any = None
    city: str | None = None
    # engine, fallback or personalize (see recommenders.Scored).
    source: str = ENGINE

    @property
    def why(self) -> str | None:
        """The reason in the visitor's words, e.g. "Because you viewed Botox"."""
        return explain(self.reason, self.because, self.item, self.city)


def explain(reason: str, because, item, city: str | None = None) -> str | None:
    """Say why a recommender placed an item, naming what led to it."""
    if reason == "popular_in_city" and city:
        return f"Popular in {city}"
    if because is None or because is item:
        return {"viewed": "You viewed this", "personalize": "Picked for you"}.get(
            reason
        )
    name = because.display_name
    if reason == "also_viewed":
        return f"Because you viewed {name}"
    if reason == "affinity" and hasattr(because, "procedures"):  # a category
        return f"Because you viewed {name} treatments"
    if reason in ("affinity", "viewed"):
        return f"Because you viewed {name}"
    return None


@dataclass(frozen=True)
class Ranking:
    """A ranked list of loaded items and what produced it."""

    items: list[RankedItem]
    # "affinity" (all from the visitor's own signals), "mixed" (some, then
    # popular), "popular" (nothing personal) or "personalize" (AWS re-ranked it).
    source: str
    kind: str = ""
    # Random: the page's links carry it, so a click names the list it came from.
    list_id: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def personalized(self) -> bool:
        return self.source != "popular"

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class HomeSections:
    """What the home page shows one visitor."""

    by_kind: dict[str, Ranking]
    recently_viewed: list[Any]
    # The city the visitor chose, and its popular doctors.
    city: str | None
    popular_in_city: Ranking | None


# The top of a list that diversity spreads over categories ("a top 10").
DIVERSE_TOP = 10
# How much deeper than k a diversified list looks for items of other categories.
DIVERSITY_POOL = 3


class Diversity:
    """At most `per_category` procedures of one category in a list's top
    DIVERSE_TOP: the others wait, in their order, for the places after it.
    0 changes nothing."""

    def __init__(self, items: Items, per_category: int):
        self.items = items
        self.per_category = per_category

    def applies(self, kind: str) -> bool:
        return kind == "procedure" and self.per_category > 0

    def __call__(self, scored: list[Scored], k: int) -> list[Scored]:
        categories = self.items.procedure_candidates((), [s.item.id for s in scored])
        return spread(scored, categories, self.per_category, k)


def spread(
    scored: list[Scored], category_of: dict[int, int], per_category: int, k: int
) -> list[Scored]:
    """The first k of `scored` with at most `per_category` of one category among
    the first DIVERSE_TOP; scores capped so they never rise down the list."""
    top: list[Scored] = []
    rest: list[Scored] = []  # in their order: those that waited, and the others
    counts: Counter = Counter()
    for entry in scored:
        category = category_of.get(entry.item.id)
        if len(top) < DIVERSE_TOP and counts[category] < per_category:
            top.append(entry)
            counts[category] += 1
        else:
            rest.append(entry)
    return non_increasing((top + rest)[:k])


def page_list(
    recommender: Recommender,
    visitor: VisitorProfile,
    kind: str,
    k: int,
    exclude: frozenset[ItemKey] = frozenset(),
    diversity: Diversity | None = None,
) -> list[Scored]:
    """What a page shows: the recommender's top k without the items the visitor
    disliked, which go last, and only when nothing else is left; spread over
    categories when `diversity` applies. The offline evaluation scores this same
    list."""
    disliked = sorted(visitor.disliked_of(kind))
    diverse = diversity is not None and diversity.applies(kind)
    pool = k * DIVERSITY_POOL if diverse else k
    scored = recommender.recommend(visitor, kind, pool, exclude=[*disliked, *exclude])
    if diverse:
        scored = diversity(scored, k)
    return scored + [
        Scored(item, 0.0, "disliked", FALLBACK) for item in disliked[: k - len(scored)]
    ]


def nearby_first(scored: list[Scored], nearby: list[int], k: int) -> list[Scored]:
    """Among the visitor's personal picks, doctors of their city come first: the
    region they chose is a signal. The popular fill keeps its order (the city's
    popular doctors have their own section), and no unrelated doctor of the city
    goes before one who does what the visitor looks for."""
    near = set(nearby)

    def place(entry: Scored) -> tuple[bool, bool]:
        personal = entry.source != FALLBACK
        return not personal, personal and entry.item.id not in near

    # sorted() is stable: each group keeps the recommender's order.
    return non_increasing(sorted(scored, key=place)[:k])


def keys_of(scored: list[Scored]) -> list[ItemKey]:
    """The items of a list and what led to them: what showing it loads."""
    return [s.item for s in scored] + [s.because for s in scored if s.because]


def source_of(scored: list[Scored]) -> str:
    """Name what filled a list: Personalize, all personal, some, or none."""
    if any(entry.source == PERSONALIZE for entry in scored):
        return "personalize"
    personal = sum(entry.source == ENGINE for entry in scored)
    if not personal:
        return "popular"
    return "affinity" if personal == len(scored) else "mixed"


class Sections:
    """Builds the ranked sections pages and the JSON API show."""

    def __init__(
        self, items: Items, recommender: Recommender, max_per_category: int = 0
    ):
        self.items = items
        self.recommender = recommender
        self.diversity = Diversity(items, max_per_category)

    def section(
        self,
        visitor: VisitorProfile,
        kind: str,
        k: int,
        recommender: Recommender | None = None,
        exclude_seen: bool = False,
    ) -> Ranking:
        """The visitor's top k items of a kind, always k when the catalog has them.

        exclude_seen: leave out the procedures, doctors and packages the visitor
        recently saw (pages show them in "recently viewed", so "for you" brings
        something new); categories stay, they are where the visitor browses.
        """
        scored = self.ranked(visitor, kind, k, recommender, exclude_seen)
        return self.load(kind, scored, visitor.city)

    def ranked(
        self,
        visitor: VisitorProfile,
        kind: str,
        k: int,
        recommender: Recommender | None = None,
        exclude_seen: bool = False,
    ) -> list[Scored]:
        """What `section` shows, before its items are loaded.

        The profile keeps the list for the visitor's next pages (see
        Profiles.load): it changes when they do something new. A remote
        recommender's (Personalize) is asked afresh on each page.
        """
        recommender = recommender or self.recommender
        seen = (
            frozenset(key for key in visitor.recent if key.kind in VIEWABLE_KINDS)
            if exclude_seen
            else frozenset()
        )
        if is_remote(recommender):
            return self.rank(visitor, kind, k, recommender, seen)
        memo_key = ("section", recommender.name, kind, k, seen)
        if memo_key not in visitor.memo:
            visitor.memo[memo_key] = self.rank(visitor, kind, k, recommender, seen)
        return visitor.memo[memo_key]

    def rank(
        self,
        visitor: VisitorProfile,
        kind: str,
        k: int,
        recommender: Recommender,
        seen: frozenset[ItemKey],
    ) -> list[Scored]:
        """Ask the recommender (see page_list); doctors of the visitor's city
        first."""
        regional = kind == "doctor" and visitor.city
        pool = max(k, REGIONAL_POOL) if regional else k
        scored = page_list(recommender, visitor, kind, pool, seen, self.diversity)
        if regional:
            scored = nearby_first(scored, self.items.doctors_in(visitor.city), k)
        return scored

    def home(
        self,
        visitor: VisitorProfile,
        sizes: dict[str, int],
        recently_viewed: int = 0,
        popular_in_city: int = 0,
        held_out: Recommender | None = None,
    ) -> HomeSections:
        """The home page's sections ({"category": 6, ...}) for one profile: what
        the visitor saw recently is in its own strip, not in "for you"; a visitor
        who chose a city also gets its popular doctors. Every item the page
        shows is loaded at once, one query per kind.

        held_out: the recommender of the experiment's control arm (popular), who
        get no history strip either; what they chose themselves (a city, "not
        interested") still holds."""
        ranked = {
            kind: self.ranked(
                visitor, kind, size, held_out, exclude_seen=held_out is None
            )
            for kind, size in sizes.items()
        }
        in_city = []
        if visitor.city and popular_in_city:
            shown = frozenset(e.item.id for e in ranked.get("doctor", []))
            in_city = self.popular_in_city_ranked(visitor.city, popular_in_city, shown)
        recent = [] if held_out else self.recent_keys(visitor, recently_viewed)
        lists = [*ranked.values(), in_city]
        loaded = self.load_keys(
            [key for scored in lists for key in keys_of(scored)] + recent
        )
        return HomeSections(
            {
                kind: self.ranking(kind, scored, loaded, visitor.city)
                for kind, scored in ranked.items()
            },
            [loaded[key] for key in recent if key in loaded],
            visitor.city,
            self.ranking("doctor", in_city, loaded, visitor.city) if in_city else None,
        )

    def home_procedure_ids(self, visitor: VisitorProfile, k: int) -> list[int]:
        """The procedures the home page ranks first for a visitor (regions)."""
        return [
            entry.item.id
            for entry in self.section(visitor, "procedure", k, exclude_seen=True)
        ]

    def similar(
        self, item: ItemKey, k: int, recommender: Recommender | None = None
    ) -> Ranking:
        """Items like this one (procedure pages: "similar procedures")."""
        return self.load(item.kind, (recommender or self.recommender).similar(item, k))

    def popular_in_city_ranked(
        self, city: str, k: int, shown: frozenset[int] = frozenset()
    ) -> list[Scored]:
        """The city's doctors, most popular first, then top rated; none of the
        `shown` ones (already on the page)."""
        in_city = [d for d in self.items.doctors_in(city) if d not in shown]
        popular = self.recommender.recommend(anonymous(), "doctor", REGIONAL_POOL)
        chosen = [s for s in popular if s.item.id in set(in_city)][:k]
        shown = {s.item.id for s in chosen}
        chosen += [
            Scored(ItemKey("doctor", doctor_id), 0.0, "popular", FALLBACK)
            for doctor_id in in_city
            if doctor_id not in shown
        ][: k - len(chosen)]
        return non_increasing([replace(s, reason="popular_in_city") for s in chosen])

    @staticmethod
    def recent_keys(visitor: VisitorProfile, k: int) -> list[ItemKey]:
        """The procedures, doctors and packages the visitor saw last, newest
        first (disliked ones left out)."""
        return [
            key
            for key in visitor.recent
            if key.kind in VIEWABLE_KINDS and key not in visitor.disliked
        ][:k]

    def load(self, kind: str, scored: list[Scored], city: str | None = None) -> Ranking:
        """Fetch a list's items and what led to them (one query per kind)."""
        return self.ranking(kind, scored, self.load_keys(keys_of(scored)), city)

    @staticmethod
    def ranking(
        kind: str,
        scored: list[Scored],
        loaded: dict[ItemKey, Any],
        city: str | None = None,
    ) -> Ranking:
        """A list with its loaded items and what led to them, in its order;
        items no longer in the catalog (an answer from Personalize, say) are
        left out."""
        return Ranking(
            [
                RankedItem(
                    loaded[entry.item],
                    round(entry.score, 6),
                    entry.reason,
                    loaded.get(entry.because),
                    city,
                    entry.source,
                )
                for entry in scored
                if entry.item in loaded
            ],
            source_of(scored),
            kind,
        )

    def load_keys(self, keys: list[ItemKey]) -> dict[ItemKey, Any]:
        """Catalog items by key: one query per kind."""
        ids: dict[str, set[int]] = defaultdict(set)
        for key in keys:
            ids[key.kind].add(key.id)
        loaded = {}
        for kind, wanted in ids.items():
            for item_id, item in self.items.load(kind, wanted).items():
                loaded[ItemKey(kind, item_id)] = item
        return loaded
