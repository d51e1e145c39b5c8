"""Offline evaluation: score rankings on a split's test visitors (NDCG, recall,
precision, coverage, each with its standard error; time per ranking), the
references that need no library (most popular, the visitor's own history), and
tuning on a validation split.

The splits are in personalization/protocols.py. The engine's rows are the objects
the site serves, replayed over a scratch database
(personalization_system.replay_system); `flask personalization evaluate` runs it
on the site's own log, bench/evaluate_public.py on public datasets with the
library references (ItemKNN, EASE, ALS) next to it.
"""

import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from personalization.events import ItemKey, VisitorInteraction
from personalization.profiles import VisitorProfile
from personalization.protocols import PROTOCOLS, Split, split_log, validation_split
from personalization.ranking import Diversity, page_list
from personalization.recommenders import Recommender

__all__ = [
    "PROTOCOLS",
    "Split",
    "split_log",
    "validation_split",
    "ndcg_at_k",
    "recall_at_k",
    "precision_at_k",
    "mean_and_error",
    "score_rankings",
    "score_recommenders",
    "page_ranker",
    "most_popular",
    "own_history",
    "tune",
    "tune_own_history",
    "format_table",
]

# A ranker: (visitor id, items it must not rank, k) -> up to k item ids, best first.
Ranker = Callable[[str, set[int], int], list[int]]
# The own-history reference's decays per step, tried on validation (plain counts
# first: they win ties).
OWN_HISTORY_DECAYS = (1.0, 0.97, 0.9, 0.8, 0.5)
# Resamples of the test visitors behind coverage's standard error.
BOOTSTRAP_ROUNDS = 100


# Metrics


def ndcg_at_k(ranked: list[int], relevant: set[int], k: int) -> float:
    """Normalised discounted cumulative gain with binary relevance."""
    gains = sum(
        1 / math.log2(position + 2)
        for position, item in enumerate(ranked[:k])
        if item in relevant
    )
    ideal = sum(
        1 / math.log2(position + 2) for position in range(min(k, len(relevant)))
    )
    return gains / ideal if ideal else 0.0


def recall_at_k(ranked: list[int], relevant: set[int], k: int) -> float:
    """Share of the relevant items found in the top k."""
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def precision_at_k(ranked: list[int], relevant: set[int], k: int) -> float:
    """Share of the top k that is relevant."""
    return len(set(ranked[:k]) & relevant) / k


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n))."""
    count = len(values)
    if not count:
        return 0.0, 0.0
    mean = sum(values) / count
    if count < 2:
        return mean, 0.0
    variance = sum((value - mean) ** 2 for value in values) / (count - 1)
    return mean, math.sqrt(variance / count)


def coverage_and_error(
    lists: list[list[int]],
    catalog_size: int,
    seed: int = 0,
    rounds: int = BOOTSTRAP_ROUNDS,
) -> tuple[float, float]:
    """Share of the catalog that appears in some list, and its bootstrap standard
    error over the visitors (coverage is not a mean over visitors)."""
    if not catalog_size or not lists:
        return 0.0, 0.0
    coverage = len({item for found in lists for item in found}) / catalog_size
    if rounds < 2:
        return coverage, 0.0
    draw = random.Random(seed)
    samples = []
    for _ in range(rounds):
        picked = draw.choices(lists, k=len(lists))
        samples.append(len({item for found in picked for item in found}))
    mean = sum(samples) / len(samples)
    spread = math.sqrt(sum((s - mean) ** 2 for s in samples) / (len(samples) - 1))
    return coverage, spread / catalog_size


def score_rankings(
    rank: Ranker,
    test: Mapping[str, set[int]],
    k: int,
    catalog_size: int,
    exclude: Mapping[str, set[int]] | None = None,
    resample: bool = True,
) -> dict[str, float]:
    """Rank for every test visitor, without the items `exclude` holds for them
    (dropped again here, should a ranker return one); average the metrics.
    Without `resample`, coverage's standard error (a bootstrap) is left at 0."""
    exclude = exclude or {}
    values: dict[str, list[float]] = defaultdict(list)
    lists = []
    elapsed = 0.0
    for visitor, relevant in sorted(test.items()):
        excluded = exclude.get(visitor, set())
        started = time.perf_counter()
        found = rank(visitor, excluded, k)
        elapsed += time.perf_counter() - started
        ranked = list(dict.fromkeys(i for i in found if i not in excluded))[:k]
        lists.append(ranked)
        values["ndcg"].append(ndcg_at_k(ranked, relevant, k))
        values["recall"].append(recall_at_k(ranked, relevant, k))
        values["precision"].append(precision_at_k(ranked, relevant, k))
    row: dict[str, float] = {}
    for metric in ("ndcg", "recall", "precision"):
        mean, error = mean_and_error(values[metric])
        row[f"{metric}@{k}"] = mean
        row[f"{metric}@{k}_se"] = error
    row["coverage"], row["coverage_se"] = coverage_and_error(
        lists, catalog_size, rounds=BOOTSTRAP_ROUNDS if resample else 0
    )
    row["ms_per_ranking"] = elapsed * 1000 / max(1, len(test))
    row["users"] = len(test)
    return row


def score_recommenders(
    recommenders: Mapping[str, Recommender],
    load_profile: Callable[[str], VisitorProfile],
    test: Mapping[str, set[int]],
    k: int,
    catalog_size: int,
    exclude: Mapping[str, set[int]] | None = None,
) -> dict[str, dict]:
    """Score each recommender's procedure lists, as a page would show them (what
    the visitor disliked goes last), told to leave out the excluded items, so it
    fills their places as it would on a page (from popular); one row per
    recommender. The time per ranking includes reading the visitor's profile."""

    return {
        name: score_rankings(
            page_ranker(recommender, load_profile), test, k, catalog_size, exclude
        )
        for name, recommender in recommenders.items()
    }


def page_ranker(
    recommender: Recommender,
    load_profile: Callable[[str], VisitorProfile],
    diversity: Diversity | None = None,
) -> Ranker:
    """A recommender's procedure list as a page shows it (page_list), without the
    excluded items: it fills their places as a page would (from popular), and
    spreads over categories when `diversity` applies."""

    def rank(visitor: str, excluded: set[int], k: int) -> list[int]:
        keys = frozenset(ItemKey("procedure", item) for item in excluded)
        found = page_list(
            recommender, load_profile(visitor), "procedure", k, keys, diversity
        )
        return [entry.item.id for entry in found]

    return rank


# References that need no library


def positive(
    train: Iterable[VisitorInteraction], weights: Mapping[str, float]
) -> Iterable[VisitorInteraction]:
    return (e for e in train if weights.get(e.interaction.type, 0.0) > 0)


def most_popular(train: list[VisitorInteraction], weights: Mapping[str, float]):
    """MostPop: items by how many visitors took them (a positive event), over the
    whole training log; ties by item id."""
    takers = Counter(
        item
        for _, item in {
            (e.visitor_id, e.interaction.item.id) for e in positive(train, weights)
        }
    )
    ordered = [
        item for item, _ in sorted(takers.items(), key=lambda kv: (-kv[1], kv[0]))
    ]

    def rank(visitor: str, excluded: set[int], k: int) -> list[int]:
        found = []
        for item in ordered:
            if len(found) >= k:
                break
            if item not in excluded:
                found.append(item)
        return found

    return rank


def own_history(
    train: list[VisitorInteraction], weights: Mapping[str, float], decay: float
) -> Ranker:
    """The repeat-aware reference: the visitor's own items by recency-weighted
    counts (each positive event counts decay ** its steps back from the visitor's
    latest), then MostPop."""
    history: dict[str, list[VisitorInteraction]] = defaultdict(list)
    for entry in positive(train, weights):
        history[entry.visitor_id].append(entry)
    scores: dict[str, dict[int, float]] = {}
    for visitor, entries in history.items():
        entries.sort(key=lambda e: e.interaction.occurred_at)
        counted: dict[int, float] = defaultdict(float)
        for steps, entry in enumerate(reversed(entries)):
            counted[entry.interaction.item.id] += decay**steps
        scores[visitor] = counted
    fill = most_popular(train, weights)

    def rank(visitor: str, excluded: set[int], k: int) -> list[int]:
        own = scores.get(visitor, {})
        found = [
            item
            for item, _ in sorted(own.items(), key=lambda kv: (-kv[1], kv[0]))
            if item not in excluded
        ][:k]
        return found + fill(visitor, excluded | set(found), k - len(found))

    return rank


# Tuning


def tune(
    build: Callable[[Split, dict[str, Any]], Ranker],
    grid: Iterable[dict[str, Any]],
    validation: Split,
    k: int,
    catalog_size: int,
) -> tuple[dict[str, Any], list[tuple[dict[str, Any], float]]]:
    """The parameters with the best NDCG@k on the validation split (the first
    on a tie), and every candidate's score."""
    tried = []
    for params in grid:
        rank = build(validation, params)
        row = score_rankings(
            rank, validation.test, k, catalog_size, validation.exclude, resample=False
        )
        tried.append((params, row[f"ndcg@{k}"]))
    if not tried:
        raise ValueError("an empty grid")
    best = max(tried, key=lambda pair: pair[1])  # max keeps the first of equals
    return best[0], tried


def tune_own_history(
    validation: Split, weights: Mapping[str, float], k: int, catalog_size: int
) -> float:
    """The own-history reference's decay with the best NDCG@k on validation."""
    best, _ = tune(
        lambda part, params: own_history(part.train, weights, params["decay"]),
        [{"decay": decay} for decay in OWN_HISTORY_DECAYS],
        validation,
        k,
        catalog_size,
    )
    return best["decay"]


def format_table(results: Mapping[str, dict], k: int) -> str:
    """The results as a Markdown table, each figure with its standard error."""
    lines = [
        f"| strategy | NDCG@{k} | Recall@{k} | Precision@{k} | coverage | ms/ranking |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        cells = [
            f"{row[key]:.4f} ± {row.get(key + '_se', 0.0):.4f}"
            for key in (f"ndcg@{k}", f"recall@{k}", f"precision@{k}")
        ]
        coverage = f"{row['coverage']:.3f} ± {row.get('coverage_se', 0.0):.3f}"
        lines.append(
            f"| {name} | {' | '.join(cells)} | {coverage} | "
            f"{row['ms_per_ranking']:.2f} |"
        )
    return "\n".join(lines)
