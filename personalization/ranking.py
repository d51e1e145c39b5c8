"""Page sections: ask the served recommender for a list (it drops what the visitor
excluded, fills from popular and, with Personalize, re-ranks), put what the visitor
disliked last, and load the catalog items the page shows."""

from dataclasses import dataclass
from typing import Any

from personalization.events import ItemKey
from personalization.items import Items
from personalization.profiles import VisitorProfile
from personalization.recommenders import (
    ENGINE,
    FALLBACK,
    PERSONALIZE,
    Recommender,
    Scored,
)


@dataclass(frozen=True)
class RankedItem:
    """One catalog item in a ranking, with the score that placed it and why."""

    item: Any
    score: float
    reason: str


@dataclass(frozen=True)
class Ranking:
    """A ranked list of loaded items and what produced it."""

    items: list[RankedItem]
    # "affinity" (all from the visitor's own signals), "mixed" (some, then
    # popular), "popular" (nothing personal) or "personalize" (AWS re-ranked it).
    source: str

    @property
    def personalized(self) -> bool:
        return self.source != "popular"

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def page_list(
    recommender: Recommender, visitor: VisitorProfile, kind: str, k: int
) -> list[Scored]:
    """What a page shows: the recommender's top k without the items the visitor
    disliked, which go last, and only when nothing else is left. The offline
    evaluation scores this same list."""
    disliked = sorted(visitor.disliked_of(kind))
    scored = recommender.recommend(visitor, kind, k, exclude=disliked)
    return scored + [
        Scored(item, 0.0, "disliked", FALLBACK) for item in disliked[: k - len(scored)]
    ]


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

    def __init__(self, items: Items, recommender: Recommender):
        self.items = items
        self.recommender = recommender

    def section(self, visitor: VisitorProfile, kind: str, k: int) -> Ranking:
        """The visitor's top k items of a kind, always k when the catalog has them."""
        return self.load(kind, page_list(self.recommender, visitor, kind, k))

    def similar(self, item: ItemKey, k: int) -> Ranking:
        """Items like this one (procedure pages: "similar procedures")."""
        return self.load(item.kind, self.recommender.similar(item, k))

    def load(self, kind: str, scored: list[Scored]) -> Ranking:
        """Fetch a list's items in one query, keeping its order; items no longer in
        the catalog (an answer from Personalize, say) are left out."""
        found = self.items.load(kind, [entry.item.id for entry in scored])
        return Ranking(
            [
                RankedItem(found[entry.item.id], round(entry.score, 6), entry.reason)
                for entry in scored
                if entry.item.id in found
            ],
            source_of(scored),
        )
