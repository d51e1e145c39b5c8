"""Offline evaluation: split an interaction log into a past to train on and each
visitor's later items to find, and score recommenders on them (NDCG, recall,
precision, coverage, time per ranking).

The recommenders scored are the objects the site serves, replayed over a scratch
database (personalization_system.replay_system); `flask personalization evaluate`
runs it on the site's own log, bench/evaluate_public.py on public datasets.
"""

import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from personalization.events import VisitorInteraction
from personalization.profiles import VisitorProfile
from personalization.ranking import page_list
from personalization.recommenders import Recommender

SPLITS = ("temporal", "leave-last-out")
# The share of the log, by time, that a temporal split hides.
TEST_SHARE = 0.2


@dataclass
class Split:
    train: list[VisitorInteraction]
    # Each test visitor's later items with a positive weight: what a good ranking
    # puts first.
    test: dict[str, set[int]]
    # "Now" for training: the end of the training data.
    cutoff: datetime


def split_log(
    log: list[VisitorInteraction],
    method: str,
    weights: Mapping[str, float],
    relevant_from: float = 0.0,
) -> Split:
    """Split a log of procedure interactions into training and each visitor's
    hidden test items.

    temporal: everything before the time that leaves the last 20% of the log is
    training; visitors with interactions on both sides are tested on their later
    items. leave-last-out: each visitor's last interaction is hidden (visitors with
    at least two). A hidden interaction is relevant when its weight is positive and
    at least `relevant_from`.
    """

    def relevant(entry: VisitorInteraction) -> bool:
        weight = weights.get(entry.interaction.type, 0.0)
        return weight > 0 and weight >= relevant_from

    def when(entry: VisitorInteraction) -> datetime:
        return entry.interaction.occurred_at

    if method not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}")
    ordered = sorted(log, key=lambda e: (when(e), e.visitor_id, e.interaction.item.id))
    if not ordered:
        raise ValueError("the log is empty")
    train: list[VisitorInteraction] = []
    later: dict[str, set[int]] = defaultdict(set)
    if method == "temporal":
        cutoff = when(
            ordered[min(len(ordered) - 1, int(len(ordered) * (1 - TEST_SHARE)))]
        )
        for entry in ordered:
            if when(entry) < cutoff:
                train.append(entry)
            elif relevant(entry):
                later[entry.visitor_id].add(entry.interaction.item.id)
    else:
        last: dict[str, VisitorInteraction] = {}
        counts: dict[str, int] = defaultdict(int)
        for entry in ordered:
            last[entry.visitor_id] = entry
            counts[entry.visitor_id] += 1
        for entry in ordered:
            hidden = counts[entry.visitor_id] >= 2 and entry is last[entry.visitor_id]
            if not hidden:
                train.append(entry)
            elif relevant(entry):
                later[entry.visitor_id].add(entry.interaction.item.id)
        cutoff = max(when(e) for e in train) if train else when(ordered[-1])
    trained = {e.visitor_id for e in train}
    test = {visitor: items for visitor, items in later.items() if visitor in trained}
    return Split(train, test, cutoff)


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


def score_rankings(
    rank: Callable[[str], list[int]],
    test: dict[str, set[int]],
    k: int,
    catalog_size: int,
) -> dict[str, float]:
    """Rank for every test visitor with `rank` (visitor id -> item ids, best
    first); average the metrics."""
    totals = defaultdict(float)
    recommended: set[int] = set()
    elapsed = 0.0
    for visitor, relevant in sorted(test.items()):
        started = time.perf_counter()
        ranked = rank(visitor)[:k]
        elapsed += time.perf_counter() - started
        recommended |= set(ranked)
        totals["ndcg"] += ndcg_at_k(ranked, relevant, k)
        totals["recall"] += recall_at_k(ranked, relevant, k)
        totals["precision"] += precision_at_k(ranked, relevant, k)
    visitors = max(1, len(test))
    return {
        f"ndcg@{k}": totals["ndcg"] / visitors,
        f"recall@{k}": totals["recall"] / visitors,
        f"precision@{k}": totals["precision"] / visitors,
        "coverage": len(recommended) / catalog_size if catalog_size else 0.0,
        "ms_per_ranking": elapsed * 1000 / visitors,
        "users": len(test),
    }


def score_recommenders(
    recommenders: Mapping[str, Recommender],
    load_profile: Callable[[str], VisitorProfile],
    test: dict[str, set[int]],
    k: int,
    catalog_size: int,
) -> dict[str, dict]:
    """Score each recommender's procedure lists, as a page would show them (what
    the visitor disliked goes last); one row per recommender. The time per ranking
    includes reading the visitor's profile, as a page does."""

    def ranker(recommender: Recommender) -> Callable[[str], list[int]]:
        def rank(visitor: str) -> list[int]:
            found = page_list(recommender, load_profile(visitor), "procedure", k)
            return [entry.item.id for entry in found]

        return rank

    return {
        name: score_rankings(ranker(recommender), test, k, catalog_size)
        for name, recommender in recommenders.items()
    }


def format_table(results: dict[str, dict], k: int) -> str:
    """The results as a Markdown table."""
    lines = [
        f"| strategy | NDCG@{k} | Recall@{k} | Precision@{k} | coverage | ms/ranking |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        lines.append(
            f"| {name} | {row[f'ndcg@{k}']:.4f} | {row[f'recall@{k}']:.4f} | "
            f"{row[f'precision@{k}']:.4f} | {row['coverage']:.3f} | "
            f"{row['ms_per_ranking']:.2f} |"
        )
    return "\n".join(lines)
