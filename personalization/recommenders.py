"""One contract for every ranking strategy, and its implementations: popularity,
the local blend (and its category-affinity and co-visitation parts on their own),
and AWS Personalize behind its adapter.

As in implicit's RecommenderBase and LensKit's pipelines, each recommender answers
`recommend(visitor, kind, k, exclude)` and `similar(item, k)` with a list of
Scored, best first; what a scorer cannot fill, popularity fills, so no list comes
back short. tests/test_recommender_contract.py holds every one to the contract.
"""

from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from functools import wraps
from typing import Protocol

from personalization import telemetry
from personalization.events import ItemKey
from personalization.items import Items
from personalization.profiles import VisitorProfile, anonymous
from personalization.settings import Settings
from personalization.statistics import CoVisitation, Popularity

# Where a Scored came from: the visitor's own signals, a fallback that knows
# nothing of them, or AWS Personalize.
ENGINE, FALLBACK, PERSONALIZE = "engine", "fallback", "personalize"


@dataclass(frozen=True)
class Scored:
    """One recommended item: its key, its score and why it is there.

    reason: affinity (category interest), also_viewed (co-visitation), viewed
    (the visitor's own recent item), popular, same_category, personalize, disliked.
    because: the item that led to it, shown as "because you viewed ...": the
    category of an affinity, the seen procedure of an also_viewed, the top
    procedure a recommended doctor performs.
    """

    item: ItemKey
    score: float
    reason: str
    source: str = ENGINE
    because: ItemKey | None = None


class Recommender(Protocol):
    """The contract: at most k items, no duplicates, none excluded, scores
    non-increasing, the same answer for the same data, a full list even for a
    visitor with no history, and no error for an unknown item."""

    name: str

    def recommend(
        self,
        visitor: VisitorProfile,
        kind: str,
        k: int,
        exclude: Collection[ItemKey] = (),
    ) -> list[Scored]: ...

    def similar(self, item: ItemKey, k: int) -> list[Scored]: ...


def is_remote(recommender: Recommender) -> bool:
    """Whether a recommender calls another service for each list (Personalize):
    its lists are not kept between pages."""
    return getattr(recommender, "remote", False)


class PersonalizeAdapter(Protocol):
    """What PersonalizeRecommender needs of personalize_client.PersonalizeClient:
    None means "no answer, keep the local order"."""

    # A ranking campaign is configured (re-ranking happens).
    enabled: bool
    # A SIMS campaign is configured (similar items come from AWS).
    sims_campaign_arn: str

    def rerank(
        self, visitor_id: str, item_ids: list[str]
    ) -> list[tuple[str, float]] | None: ...

    def similar_items(
        self, item_id: str, limit: int
    ) -> list[tuple[str, float]] | None: ...

    def last_failure(self) -> str | None:
        """Why this thread's latest call got no answer (timeout, error,
        throttled, circuit_open, budget), or None."""
        ...


def measured_recommend(method: Callable) -> Callable:
    """Time a recommender's `recommend`, and record and log how its list was
    filled (personalization.telemetry); calls nested in it are part of it."""

    @wraps(method)
    def recommend(self, visitor, kind, k, exclude=()):
        subject = telemetry.visitor_label(visitor.visitor_id)
        with telemetry.ranking(self.name, "recommend", kind, subject) as decision:
            found = method(self, visitor, kind, k, exclude)
            if decision:
                describe(decision, found, fills=self.name != "popular")
        return found

    return recommend


def measured_similar(method: Callable) -> Callable:
    """`measured_recommend` for a recommender's `similar`."""

    @wraps(method)
    def similar(self, item, k):
        with telemetry.ranking(self.name, "similar", item.kind, str(item)) as decision:
            found = method(self, item, k)
            if decision:
                describe(decision, found, fills=self.name != "popular")
        return found

    return similar


def describe(decision: telemetry.Decision, found: list[Scored], fills: bool) -> None:
    """Say where a list came from and whether popularity filled it: all of it
    (cold_start: nothing personal to go on) or its end (popular_fill). `fills`
    is False for the popularity recommender, whose answer is popularity."""
    fallback = sum(entry.source == FALLBACK for entry in found)
    if any(entry.source == PERSONALIZE for entry in found):
        decision.source = PERSONALIZE
    elif len(found) > fallback:
        decision.source = ENGINE
    elif found:
        decision.source = FALLBACK
    if fills and fallback:
        decision.fell_back("popular_fill" if len(found) > fallback else "cold_start")


def non_increasing(scored: list[Scored]) -> list[Scored]:
    """Cap each score at the one above it, so a list's scores never rise.

    Fallback items and leftovers of a re-ranking carry scores from another scale;
    their position, not their raw score, is what the list promises.
    """
    capped: list[Scored] = []
    for entry in scored:
        if capped and entry.score > capped[-1].score:
            entry = replace(entry, score=capped[-1].score)
        capped.append(entry)
    return capped


def unique(scored: list[Scored]) -> list[Scored]:
    """Drop repeats of an item, keeping its first (best placed) entry."""
    seen: set[ItemKey] = set()
    kept = []
    for entry in scored:
        if entry.item not in seen:
            seen.add(entry.item)
            kept.append(entry)
    return kept


def best_first(scores: dict[ItemKey, float], reason: str) -> list[Scored]:
    """Scores as a list, best first; ties broken by item id, so order is stable."""
    return [
        Scored(item, score, reason)
        for item, score in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0].id))
    ]


class PopularityRecommender:
    """The most popular items: what a visitor with no history sees, and the fill."""

    name = "popular"

    def __init__(self, popularity: Popularity, items: Items):
        self.popularity = popularity
        self.items = items

    @measured_recommend
    def recommend(
        self,
        visitor: VisitorProfile,
        kind: str,
        k: int,
        exclude: Collection[ItemKey] = (),
    ) -> list[Scored]:
        excluded = {item.id for item in exclude if item.kind == kind}
        found: list[Scored] = []
        for item_id, score in self.popularity.scores(kind):
            if len(found) >= k:
                break
            if item_id not in excluded:
                found.append(Scored(ItemKey(kind, item_id), score, "popular", FALLBACK))
        return found

    @measured_similar
    def similar(self, item: ItemKey, k: int) -> list[Scored]:
        """The most popular other items of its kind."""
        if not self.items.existing([item]):
            return []
        return self.recommend(anonymous(), item.kind, k, exclude={item})


@dataclass(frozen=True)
class BlendWeights:
    """How the blend mixes its parts (see BlendRecommender.procedure_scores)."""

    covisitation: float
    history: float


class BlendRecommender:
    """The local engine: the visitor's category affinity, co-visitation with their
    recent procedures and their own recent items, blended; popular items fill."""

    def __init__(
        self,
        name: str,
        weights: BlendWeights,
        settings: Settings,
        items: Items,
        popularity: Popularity,
        covisitation: CoVisitation,
        fallback: PopularityRecommender,
    ):
        self.name = name
        self.weights = weights
        self.settings = settings
        self.items = items
        self.popularity = popularity
        self.covisitation = covisitation
        self.fallback = fallback

    @measured_recommend
    def recommend(
        self,
        visitor: VisitorProfile,
        kind: str,
        k: int,
        exclude: Collection[ItemKey] = (),
    ) -> list[Scored]:
        excluded = set(exclude)
        personal = [s for s in self.scores(visitor, kind) if s.item not in excluded]
        chosen = personal[:k]
        if len(chosen) < k:
            shown = excluded | {s.item for s in chosen}
            chosen += self.fallback.recommend(visitor, kind, k - len(chosen), shown)
        return non_increasing(chosen)

    def scores(self, visitor: VisitorProfile, kind: str) -> list[Scored]:
        """The visitor's personal scores for one kind, best first (no fill)."""
        if kind == "category":
            return self.category_scores(visitor)
        if kind == "procedure":
            return self.procedure_scores(visitor)
        if kind == "doctor":
            return self.doctor_scores(self.procedure_scores(visitor))
        return []

    def category_scores(self, visitor: VisitorProfile) -> list[Scored]:
        """Categories by the visitor's decayed affinity."""
        floor = self.settings.affinity_floor
        ranked = best_first(
            {
                ItemKey("category", category_id): score
                for category_id, score in visitor.affinities.items()
                if score >= floor
            },
            "affinity",
        )
        return [replace(s, because=s.item) for s in ranked]

    def procedure_scores(self, visitor: VisitorProfile) -> list[Scored]:
        """The blended ranking of procedures for one visitor, worked out once per
        profile (a page asks for procedures and doctors).

        score = (1 - w) * affinity(category) * (0.5 + 0.5 * popularity / max)
              + w * co-visitation with the visitor's recent procedures
              + h * the visitor's own interest in the procedure / their strongest,
        with w and h the blend's weights. Candidates: procedures of the visitor's
        top categories, co-visitation neighbours of what they recently saw, and
        what they recently saw (shoppers come back to it: on the Taobao log,
        h = 0.6 doubles NDCG@10; see BENCHMARKS.md).
        """
        memo_key = (self.name, "procedure")
        if memo_key not in visitor.memo:
            visitor.memo[memo_key] = self._procedure_scores(visitor)
        return visitor.memo[memo_key]

    def _procedure_scores(self, visitor: VisitorProfile) -> list[Scored]:
        if not visitor.visitor_id:
            return []
        w, h = self.weights.covisitation, self.weights.history
        settings = self.settings
        top_categories = [
            category_id
            for category_id, score in sorted(
                visitor.affinities.items(), key=lambda kv: (-kv[1], kv[0])
            )
            if score >= settings.affinity_floor
        ][: settings.top_categories]
        # Neighbours and own items are candidates whatever their weights: the
        # affinity term can still score them.
        seeds = [
            item.id
            for item in visitor.recent
            if item.kind == "procedure" and item not in visitor.disliked
        ]
        covisited, led_by = self.covisitation.neighbours_explained(
            seeds[: settings.covisitation_seeds]
        )
        own = {
            item.id: weight
            for item, weight in visitor.interest.items()
            if item.kind == "procedure"
        }
        if not top_categories and not covisited and not own:
            return []
        popularity = dict(self.popularity.scores("procedure"))
        candidates = self.items.procedure_candidates(
            top_categories, set(covisited) | set(own)
        )
        most_popular = max((popularity.get(pid, 0.0) for pid in candidates), default=0)
        strongest_own = max(own.values(), default=0.0)
        scored = []
        for procedure_id, category_id in candidates.items():
            relative_popularity = (
                popularity.get(procedure_id, 0.0) / most_popular if most_popular else 0
            )
            parts = {
                "affinity": (1 - w)
                * visitor.affinities.get(category_id, 0.0)
                * (0.5 + 0.5 * relative_popularity),
                "also_viewed": w * covisited.get(procedure_id, 0.0),
                "viewed": h * own.get(procedure_id, 0.0) / strongest_own
                if strongest_own
                else 0.0,
            }
            score = sum(parts.values())
            if score > 0:
                reason = max(parts, key=parts.__getitem__)
                because = {
                    "affinity": ItemKey("category", category_id),
                    "also_viewed": ItemKey("procedure", led_by.get(procedure_id, 0)),
                    "viewed": ItemKey("procedure", procedure_id),
                }[reason]
                scored.append(
                    Scored(
                        ItemKey("procedure", procedure_id),
                        score,
                        reason,
                        because=because,
                    )
                )
        scored.sort(key=lambda s: (-s.score, s.item.id))
        return scored

    def doctor_scores(self, procedure_scores: list[Scored]) -> list[Scored]:
        """Doctors who perform the visitor's top procedures: the sum of those
        procedures' scores x the doctor's rating / 5."""
        top = {
            s.item.id: s.score
            for s in procedure_scores[: self.settings.doctor_procedures]
        }
        if not top:
            return []
        scores: dict[ItemKey, float] = defaultdict(float)
        strongest: dict[ItemKey, tuple[float, int]] = {}
        for doctor_id, procedure_id, rating in self.items.doctors_performing(top):
            doctor = ItemKey("doctor", doctor_id)
            part = top[procedure_id] * rating / 5
            scores[doctor] += part
            strongest[doctor] = max(
                strongest.get(doctor, (0.0, 0)), (part, -procedure_id)
            )
        return [
            replace(s, because=ItemKey("procedure", -strongest[s.item][1]))
            for s in best_first(scores, "affinity")
        ]

    @measured_similar
    def similar(self, item: ItemKey, k: int) -> list[Scored]:
        """Procedures its visitors also viewed, then popular ones of its category,
        then popular ones. Other kinds have no neighbours: popular ones of the kind."""
        if item.kind != "procedure":
            return self.fallback.similar(item, k)
        same_category = self.items.same_category(item.id)
        if not same_category:
            return []  # not in the catalog
        neighbours = self.covisitation.neighbours([item.id])
        neighbours.pop(item.id, None)
        covisited = [
            replace(s, because=item)
            for s in best_first(
                {ItemKey("procedure", pid): s for pid, s in neighbours.items()},
                "also_viewed",
            )[:k]
        ]
        shown = {item} | {s.item for s in covisited}
        popular = self.fallback.recommend(
            anonymous(), "procedure", self.settings.popular_list_size, shown
        )
        fill = [
            replace(s, reason="same_category")
            for s in popular
            if s.item.id in same_category
        ]
        fill += [s for s in popular if s.item.id not in same_category]
        return non_increasing((covisited + fill)[:k])


class PersonalizeRecommender:
    """AWS Personalize over the local engine: it re-ranks the engine's candidates
    for a visitor with history (GetPersonalizedRanking) and answers similar items
    from a SIMS campaign. Any failure, timeout or open circuit keeps the local
    answer: the adapter returns None and nothing breaks."""

    name = "personalize"
    # Asks AWS on every page (its answer follows events streamed to it, and
    # each page has a call budget): pages never keep its lists (is_remote).
    remote = True

    def __init__(
        self,
        adapter: PersonalizeAdapter,
        local: Recommender,
        items: Items,
        candidates: int,
    ):
        self.adapter = adapter
        self.local = local
        self.items = items
        self.candidates = candidates

    @measured_recommend
    def recommend(
        self,
        visitor: VisitorProfile,
        kind: str,
        k: int,
        exclude: Collection[ItemKey] = (),
    ) -> list[Scored]:
        if not self.adapter.enabled:  # no ranking campaign: the local order
            return self.local.recommend(visitor, kind, k, exclude)
        pool = self.local.recommend(visitor, kind, max(k, self.candidates), exclude)
        if not visitor.visitor_id or not any(s.source == ENGINE for s in pool):
            return pool[:k]  # nothing personal to re-rank: a cold visitor
        ranked = self.adapter.rerank(visitor.visitor_id, [str(s.item) for s in pool])
        if ranked is None:
            self.note_failure()
            return pool[:k]
        return non_increasing(reordered(pool, ranked))[:k]

    @measured_similar
    def similar(self, item: ItemKey, k: int) -> list[Scored]:
        """Items like this one from the SIMS campaign, when it names at least k of
        the catalog's; else the local engine's."""
        answer = self.adapter.similar_items(str(item), k + 1)
        if answer is None:
            self.note_failure()
        if answer and self.items.existing([item]):
            similar = unique(
                [
                    Scored(key, score, "personalize", PERSONALIZE)
                    for key, score in ((ItemKey.parse(ref), s) for ref, s in answer)
                    if key and key.kind == item.kind and key != item
                ]
            )
            if len(similar) >= k:
                return non_increasing(similar[:k])
            telemetry.fell_back("personalize_short")
        return self.local.similar(item, k)

    def note_failure(self) -> None:
        """Record why Personalize gave no answer, if it failed (not merely off)."""
        reason = self.adapter.last_failure()
        if reason:
            telemetry.fell_back(f"personalize_{reason}")


def reordered(pool: list[Scored], ranked: list[tuple[str, float]]) -> list[Scored]:
    """The pool in Personalize's order, with its scores; items it left out keep
    their local order, after."""
    by_key = {str(s.item): s for s in pool}
    ordered = []
    for key, score in ranked:
        entry = by_key.pop(key, None)
        if entry:
            ordered.append(replace(entry, score=score, source=PERSONALIZE))
    return ordered + [s for s in pool if str(s.item) in by_key]


# What the recommendations API's ?algorithm= names: the served blend (or
# Personalize), co-visitation ("visitors who viewed this also viewed"), the
# visitor's category interests (content), and popularity.
HYBRID = "hybrid"
ALGORITHMS = (HYBRID, "collaborative", "content", "popular")


@dataclass(frozen=True)
class Recommenders:
    """Every recommender of one engine. Pages and the API use `served`; the
    offline evaluation scores them all."""

    popular: PopularityRecommender
    category_affinity: BlendRecommender
    covisitation: BlendRecommender
    blend: BlendRecommender
    personalize: PersonalizeRecommender | None = None
    # The user-personalization campaign (personalization/personalize.py).
    user_campaign: Recommender | None = None
    # The engine's procedure ranking (personalization/neighbours.py).
    neighbours: Recommender | None = None

    @property
    def local(self) -> Recommender:
        """The local engine: what Personalize re-ranks and falls back to."""
        return self.neighbours or self.blend

    @property
    def served(self) -> Recommender:
        return self.user_campaign or self.personalize or self.local

    def for_algorithm(self, algorithm: str) -> Recommender:
        """The recommender an ALGORITHMS name stands for."""
        return {
            HYBRID: self.served,
            "collaborative": self.covisitation,
            "content": self.category_affinity,
            "popular": self.popular,
        }[algorithm]

    def by_name(self) -> dict[str, Recommender]:
        found = [self.popular, self.category_affinity, self.covisitation, self.blend]
        if self.personalize and self.personalize.adapter.enabled:
            found.append(self.personalize)  # a ranking campaign to measure
        if self.user_campaign:
            found.append(self.user_campaign)
        if self.neighbours:
            found.append(self.neighbours)
        return {recommender.name: recommender for recommender in found}


def build_recommenders(
    settings: Settings,
    items: Items,
    popularity: Popularity,
    covisitation: CoVisitation,
) -> Recommenders:
    """Wire the recommenders over one engine's statistics.

    Category affinity and co-visitation are the blend with only that part
    weighted, so what the evaluation scores is the served code, not a copy.
    """
    popular = PopularityRecommender(popularity, items)

    def blend(name: str, weights: BlendWeights) -> BlendRecommender:
        return BlendRecommender(
            name, weights, settings, items, popularity, covisitation, popular
        )

    served = blend(
        "co-visitation blend",
        BlendWeights(settings.covisitation_weight, settings.history_weight),
    )
    return Recommenders(
        popular=popular,
        category_affinity=blend("category affinity", BlendWeights(0.0, 0.0)),
        covisitation=blend("co-visitation", BlendWeights(1.0, 0.0)),
        blend=served,
    )


def with_personalize(
    recommenders: Recommenders,
    personalize: PersonalizeAdapter | None,
    items: Items,
    candidates: int,
) -> Recommenders:
    """The recommenders with AWS Personalize re-ranking the local engine, when a
    ranking or SIMS campaign is configured."""
    if not personalize or not (personalize.enabled or personalize.sims_campaign_arn):
        return recommenders
    ranking = PersonalizeRecommender(personalize, recommenders.local, items, candidates)
    return replace(recommenders, personalize=ranking)
