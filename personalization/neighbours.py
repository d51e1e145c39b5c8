"""The engine's procedure ranking (issue 16): item-to-item neighbours precomputed
from the log, scored against each visitor's recent procedures.

`flask personalization refresh` rebuilds the neighbour table with EASE (Steck
2019), the linear item-item model the offline evaluation found strongest on
MovieLens: over the NEIGHBOUR_ITEMS procedures the most visitors had, each
visitor's recent positive procedures make the Gram matrix G (how many visitors
had both of two procedures), and B = -P / diag(P) with P = (G + lambda I)^-1.
Each procedure keeps its best NEIGHBOURS_PER_ITEM positive weights, and only for
pairs at least MIN_VISITORS visitors share: one person's clicks never show.

Pages rank from memory (NeighbourModel, reloaded as popular lists are), with no
query beyond the visitor's profile:

    score = neighbours / their best                  (what the visitor had, times B)
          + NEIGHBOUR_CATEGORY_WEIGHT * category     (popular in their categories)
          + HISTORY_WEIGHT * own / their best        (only with REPEAT_CONSUMPTION)

Each of the visitor's recent distinct procedures counts SEED_RECENCY_DECAY^place
times their own net interest in it; own counts their recency-weighted visits
(Profiles.returns). Without REPEAT_CONSUMPTION what they had goes last;
popularity fills what is left, so no list comes back short.
"""

import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import groupby

import numpy as np
from sqlalchemy import delete, func, insert, select

from models import ProcedureNeighbour, UserInteraction
from personalization.events import ItemKey
from personalization.profiles import VisitorProfile
from personalization.recommenders import (
    ENGINE,
    FALLBACK,
    BlendRecommender,
    PopularityRecommender,
    Recommenders,
    Scored,
    measured_recommend,
    measured_similar,
    non_increasing,
)
from personalization.settings import Settings
from personalization.statistics import Popularity

# Pair rows written per statement when the table is rebuilt.
ROWS_PER_INSERT = 5000
# Visitors between two progress reports of a rebuild.
PROGRESS_EVERY = 1000
# A seed counts at least this much, whatever its net interest (a bare view).
SEED_FLOOR = 0.1


def ease_weights(gram: np.ndarray, regularization: float) -> np.ndarray:
    """EASE's item-item weights from a Gram matrix XᵀX: B = -P / diag(P) with
    P = (XᵀX + λI)⁻¹, and a zero diagonal (an item never recommends itself)."""
    regularized = gram.astype(np.float64, copy=True)
    regularized[np.diag_indices_from(regularized)] += regularization
    inverse = np.linalg.inv(regularized)
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return weights


def best_per_row(
    weights: np.ndarray, support: np.ndarray, floor: int, keep: int
) -> list[tuple[int, int, float]]:
    """(row, column, weight) of each row's `keep` best positive weights among
    the pairs with at least `floor` support; ties (to rounding error) go to the
    lower column."""
    weights = np.where(support >= floor, weights, 0.0)
    np.fill_diagonal(weights, 0.0)
    order = np.argsort(-np.round(weights, 12), axis=1, kind="stable")[:, :keep]
    found = []
    for row, columns in enumerate(order):
        for column in columns:
            weight = float(weights[row, column])
            if weight <= 0:
                break
            found.append((row, int(column), weight))
    return found


@dataclass(frozen=True)
class NeighbourModel:
    """The neighbour table and the catalog's popularity by category, in arrays
    indexed by catalog position: what a ranking reads, held in memory."""

    ids: np.ndarray  # position -> procedure id
    category_ids: np.ndarray  # position -> its category's id
    position: dict[int, int]  # procedure id -> position
    # Position p's neighbours are entries starts[p]:starts[p + 1] of these two.
    starts: np.ndarray
    neighbours: np.ndarray
    weights: np.ndarray
    # Per category: its procedures' positions, best first, and how popular each
    # is against the category's best (0-1).
    categories: dict[int, tuple[np.ndarray, np.ndarray]]

    @classmethod
    def build(
        cls,
        by_category: dict[int, list[tuple[int, float]]],
        pairs: list[tuple[int, int, float]],
        per_category: int,
    ) -> "NeighbourModel":
        """From every procedure's popularity by category, (procedure, neighbour,
        weight) rows sorted by procedure then best first, and how many of each
        category's most popular procedures its term reaches."""
        category_of = {
            pid: category_id
            for category_id, found in by_category.items()
            for pid, _ in found
        }
        ids = sorted(category_of.keys() | {pid for pair in pairs for pid in pair[:2]})
        position = {pid: n for n, pid in enumerate(ids)}
        counts = np.zeros(len(ids) + 1, dtype=np.int64)
        for procedure_id, _, _ in pairs:
            counts[position[procedure_id] + 1] += 1
        categories = {}
        for category_id, everything in by_category.items():
            found = everything[:per_category]
            best = found[0][1] if found and found[0][1] > 0 else 0.0
            categories[category_id] = (
                np.array([position[pid] for pid, _ in found], dtype=np.int64),
                np.array([s / best if best else 0.0 for _, s in found]),
            )
        return cls(
            ids=np.array(ids, dtype=np.int64),
            category_ids=np.array([category_of.get(pid, 0) for pid in ids]),
            position=position,
            starts=np.cumsum(counts),
            neighbours=np.array([position[n] for _, n, _ in pairs], dtype=np.int64),
            weights=np.array([w for _, _, w in pairs], dtype=np.float64),
            categories=categories,
        )

    def of(self, procedure_id: int) -> list[tuple[int, float]]:
        """A procedure's neighbours with their weights, best first."""
        at = self.position.get(procedure_id)
        if at is None:
            return []
        entries = slice(self.starts[at], self.starts[at + 1])
        found = zip(self.neighbours[entries], self.weights[entries], strict=True)
        return [(int(self.ids[n]), float(w)) for n, w in found]

    def neighbour_entries(
        self, seeds: dict[int, float]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (neighbour position, seed's weight times neighbour weight, seed
        position) of the seeds' neighbours, as three arrays."""
        found = [
            (self.position[seed], weight)
            for seed, weight in seeds.items()
            if seed in self.position
        ]
        if not found:
            empty = np.zeros(0, dtype=np.int64)
            return empty, np.zeros(0), empty
        positions = np.array([at for at, _ in found], dtype=np.int64)
        firsts = self.starts[positions]
        lengths = self.starts[positions + 1] - firsts
        # Every seed's run of entries, end to end, without a Python loop.
        offsets = np.cumsum(lengths) - lengths
        entries = np.arange(lengths.sum()) + np.repeat(firsts - offsets, lengths)
        targets = self.neighbours[entries]
        parts = self.weights[entries] * np.repeat([w for _, w in found], lengths)
        return targets, parts, np.repeat(positions, lengths)


class ProcedureNeighbours:
    """The precomputed neighbour table: rebuilt from the log by refresh, read
    into a NeighbourModel that each process keeps POPULARITY_CACHE_SECONDS."""

    def __init__(self, session, settings: Settings, popularity: Popularity):
        self.session = session
        self.settings = settings
        self.popularity = popularity
        self._cached: tuple[float, NeighbourModel] | None = None

    def rebuild(
        self, now: datetime, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Recompute every procedure's neighbours from the log's window (EASE
        over the NEIGHBOUR_ITEMS procedures the most visitors had); report
        (visitors done, visitors in all) to `progress`. Return the rows stored.

        Not incremental: EASE's inverse changes with every interaction. Counted
        in memory from one ordered read; MovieLens 100K takes about 2 s."""
        settings = self.settings
        histories = self.histories(now)
        visitors = Counter(item for history in histories for item in history)
        kept = sorted(
            (item for item, n in visitors.items() if n >= settings.min_visitors),
            key=lambda item: (-visitors[item], item),
        )[: settings.neighbour_items]
        index = {item: n for n, item in enumerate(kept)}
        gram = np.zeros((len(kept), len(kept)))
        for done, history in enumerate(histories, 1):
            columns = [index[item] for item in history if item in index]
            gram[np.ix_(columns, columns)] += 1.0
            if progress and (done % PROGRESS_EVERY == 0 or done == len(histories)):
                progress(done, len(histories))
        rows = []
        if kept:
            weights = ease_weights(gram, settings.neighbour_regularization)
            rows = [
                {
                    "procedure_id": kept[row],
                    "neighbour_id": kept[column],
                    "similarity": weight,
                }
                for row, column, weight in best_per_row(
                    weights, gram, settings.min_visitors, settings.neighbours_per_item
                )
            ]
        self.session.execute(delete(ProcedureNeighbour))
        for start in range(0, len(rows), ROWS_PER_INSERT):
            self.session.execute(
                insert(ProcedureNeighbour), rows[start : start + ROWS_PER_INSERT]
            )
        self.clear_cache()
        return len(rows)

    def histories(self, now: datetime) -> list[list[int]]:
        """Each visitor's distinct procedures with a positive signal in the
        window, newest first, at most NEIGHBOUR_HISTORY."""
        settings = self.settings
        positive = sorted(
            kind for kind, weight in settings.interaction_weights.items() if weight > 0
        )
        log = UserInteraction.__table__
        visits = (
            select(
                log.c.user_id, log.c.target_id, func.max(log.c.timestamp).label("at")
            )
            .where(
                log.c.target_type == "procedure",
                log.c.timestamp >= now - timedelta(days=settings.neighbour_window_days),
                log.c.timestamp <= now,
                log.c.interaction_type.in_(positive),
            )
            .group_by(log.c.user_id, log.c.target_id)
            .subquery()
        )
        rows = self.session.execute(
            select(visits.c.user_id, visits.c.target_id).order_by(
                visits.c.user_id, visits.c.at.desc(), visits.c.target_id
            )
        )
        return [
            [item for _, item in group][: settings.neighbour_history]
            for _, group in groupby(rows, key=lambda row: row[0])
        ]

    def model(self) -> NeighbourModel:
        """The table and popularity by category, read at most once per
        POPULARITY_CACHE_SECONDS per process."""
        if self._cached and self._cached[0] > time.monotonic():
            return self._cached[1]
        table = ProcedureNeighbour
        pairs = self.session.execute(
            select(table.procedure_id, table.neighbour_id, table.similarity).order_by(
                table.procedure_id, table.similarity.desc(), table.neighbour_id
            )
        ).all()
        model = NeighbourModel.build(
            self.popularity.by_category(), pairs, self.settings.popular_list_size
        )
        expires = time.monotonic() + self.settings.popularity_cache_seconds
        self._cached = (expires, model)
        return model

    def clear_cache(self) -> None:
        self._cached = None

    def size(self) -> int:
        return self.session.scalar(select(func.count()).select_from(ProcedureNeighbour))


class NeighbourRecommender:
    """The engine's procedures: neighbours of what the visitor had, popular ones
    of their categories, and (where visitors come back) their own; other kinds
    are the blend's. Popularity fills every list."""

    name = "blended (served)"

    def __init__(
        self,
        neighbours: ProcedureNeighbours,
        settings: Settings,
        popular: PopularityRecommender,
        blend: BlendRecommender,
    ):
        self.neighbours = neighbours
        self.settings = settings
        self.popular = popular
        self.blend = blend

    @measured_recommend
    def recommend(
        self,
        visitor: VisitorProfile,
        kind: str,
        k: int,
        exclude: Collection[ItemKey] = (),
    ) -> list[Scored]:
        if kind != "procedure":
            return self.blend.recommend(visitor, kind, k, exclude)
        excluded = set(exclude)
        seeds = self.seeds(visitor)
        # What the visitor had goes last (when nothing else is left), unless
        # visitors come back to what they had.
        seen = (
            []
            if self.settings.repeat_consumption
            else [ItemKey("procedure", seed) for seed in seeds]
        )
        held_back = excluded | set(seen)
        scored = self.ranked(visitor, seeds, k, held_back)
        taken = held_back | {s.item for s in scored}
        fill = self.popular.recommend(visitor, kind, k - len(scored), taken)
        room = k - len(scored) - len(fill)
        last = [item for item in seen if item not in excluded][: max(room, 0)]
        return non_increasing(
            scored + fill + [Scored(i, 0.0, "viewed", FALLBACK, i) for i in last]
        )

    def seeds(self, visitor: VisitorProfile) -> dict[int, float]:
        """The visitor's recent distinct procedures (not disliked), newest first,
        each with SEED_RECENCY_DECAY^place times their net interest in it."""
        decay = self.settings.seed_recency_decay
        recent = [
            item
            for item in visitor.recent
            if item.kind == "procedure" and item not in visitor.disliked
        ]
        return {
            item.id: decay**place * max(visitor.interest.get(item, 0.0), SEED_FLOOR)
            for place, item in enumerate(recent)
        }

    def ranked(
        self,
        visitor: VisitorProfile,
        seeds: dict[int, float],
        k: int,
        excluded: Collection[ItemKey],
    ) -> list[Scored]:
        """The k best-scored procedures outside `excluded`, each with the part
        of its score that weighed most as its reason."""
        model = self.neighbours.model()
        if not visitor.visitor_id or not len(model.ids) or k <= 0:
            return []
        settings = self.settings
        evidence = model.neighbour_entries(seeds)
        parts = {  # reason -> (positions, values), one entry per contribution
            "also_viewed": evidence[:2],
            "affinity": self.category_entries(model, visitor),
            "viewed": self.own_entries(model, visitor),
        }
        # Only the candidates are scored, never the whole catalog (Taobao: 55k).
        candidates, where = np.unique(
            np.concatenate([positions for positions, _ in parts.values()]),
            return_inverse=True,
        )
        summed = {}
        start = 0
        for reason, (positions, values) in parts.items():
            stop = start + len(positions)
            # (float even when empty: bincount of no weights gives integers)
            summed[reason] = np.bincount(
                where[start:stop], weights=values, minlength=len(candidates)
            ).astype(np.float64)
            start = stop
        best = summed["also_viewed"].max(initial=0.0)
        if best > 0:
            summed["also_viewed"] /= best
        summed["affinity"] *= settings.neighbour_category_weight
        summed["viewed"] *= settings.history_weight
        total = sum(summed.values())
        held_back = [
            model.position[item.id]
            for item in excluded
            if item.kind == "procedure" and item.id in model.position
        ]
        if held_back:
            total[np.isin(candidates, held_back, kind="table")] = 0.0
        chosen = top_positions(total, k)
        led_by = leading_seeds(candidates[chosen], *evidence)
        return [
            self.explained(model, candidates[at], total[at], summed, at, led_by)
            for at in chosen
        ]

    def category_entries(self, model: NeighbourModel, visitor: VisitorProfile):
        """(positions, values): interest in the procedure's category against the
        visitor's strongest, times (0.5 + 0.5 * its popularity in the category
        against the category's best), for their TOP_CATEGORIES categories."""
        floor = self.settings.affinity_floor
        top = sorted(
            (
                (score, category_id)
                for category_id, score in visitor.affinities.items()
                if score >= floor and category_id in model.categories
            ),
            key=lambda pair: (-pair[0], pair[1]),
        )[: self.settings.top_categories]
        if not top:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        positions = [model.categories[category_id][0] for _, category_id in top]
        values = [
            score / top[0][0] * (0.5 + 0.5 * model.categories[category_id][1])
            for score, category_id in top
        ]
        return np.concatenate(positions), np.concatenate(values)

    def own_entries(self, model: NeighbourModel, visitor: VisitorProfile):
        """(positions, values): with REPEAT_CONSUMPTION, the visitor's own
        procedures by recency-weighted visits against their strongest."""
        returns = {
            model.position[procedure_id]: weight
            for procedure_id, weight in visitor.returns.items()
            if procedure_id in model.position
        }
        if not self.settings.repeat_consumption or not returns:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        strongest = max(returns.values())
        return (
            np.array(list(returns), dtype=np.int64),
            np.array(list(returns.values())) / strongest,
        )

    @staticmethod
    def explained(model, position, score, summed, at, led_by) -> Scored:
        """One chosen procedure (candidate `at`, at `position` in the model) as a
        Scored, with the part of its score that weighed most as its reason."""
        procedure = ItemKey("procedure", int(model.ids[position]))
        reason = max(summed, key=lambda name: summed[name][at])
        because = procedure
        if reason == "also_viewed":
            because = ItemKey("procedure", int(model.ids[led_by[int(position)]]))
        elif reason == "affinity":
            because = ItemKey("category", int(model.category_ids[position]))
        return Scored(procedure, float(score), reason, ENGINE, because)

    @measured_similar
    def similar(self, item: ItemKey, k: int) -> list[Scored]:
        """The item's nearest neighbours, then what the blend would add."""
        if item.kind != "procedure":
            return self.blend.similar(item, k)
        nearest = [
            Scored(ItemKey("procedure", other), weight, "also_viewed", ENGINE, item)
            for other, weight in self.neighbours.model().of(item.id)
        ][:k]
        taken = {s.item for s in nearest} | {item}
        fill = [
            s for s in self.blend.similar(item, k + len(taken)) if s.item not in taken
        ]
        return non_increasing(nearest + fill[: k - len(nearest)])


def top_positions(total: np.ndarray, k: int) -> list[int]:
    """The positions of the k highest positive totals, best first, ties by
    position (procedure id order)."""
    candidates = np.flatnonzero(total > 0)
    if len(candidates) > k:
        threshold = np.partition(total[candidates], len(candidates) - k)[
            len(candidates) - k
        ]
        candidates = candidates[total[candidates] >= threshold]
    order = np.lexsort((candidates, -total[candidates]))
    return [int(at) for at in candidates[order][:k]]


def leading_seeds(
    chosen: np.ndarray, targets: np.ndarray, parts: np.ndarray, owners: np.ndarray
) -> dict[int, int]:
    """For each chosen position its neighbours reached, the seed that
    contributed most (the first of equals)."""
    mine = np.flatnonzero(np.isin(targets, chosen, kind="table"))
    led_by: dict[int, tuple[float, int]] = {}
    for entry in mine:
        target, part = int(targets[entry]), float(parts[entry])
        if target not in led_by or part > led_by[target][0]:
            led_by[target] = (part, int(owners[entry]))
    return {target: seed for target, (_, seed) in led_by.items()}


def with_neighbours(
    recommenders: Recommenders, neighbours: ProcedureNeighbours, settings: Settings
) -> Recommenders:
    """The recommenders with the neighbour ranking among them."""
    ranking = NeighbourRecommender(
        neighbours, settings, recommenders.popular, recommenders.blend
    )
    return replace(recommenders, neighbours=ranking)
