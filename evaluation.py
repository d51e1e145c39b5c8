"""Offline evaluation: replay an interaction log, train on the past, hide each
visitor's later interactions, and score every ranking strategy on them.

Used by `flask personalization evaluate` (the site's own log) and by
bench/evaluate_public.py (public datasets). Training happens in a scratch SQLite
database built through the project's own models and migrations, so the strategies
measured are exactly the code the site runs.
"""

import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import insert

from models import Category, Procedure, UserInteraction, db

SPLITS = ("temporal", "leave-last-out")
# The share of the log, by time, that a temporal split hides.
TEST_SHARE = 0.2


@dataclass(frozen=True)
class LoggedEvent:
    """One interaction with a catalog item (a procedure), as the evaluation sees it."""

    user_id: str
    item_id: int
    interaction_type: str
    timestamp: datetime


@dataclass
class Split:
    train: list[LoggedEvent]
    # Each test visitor's later items with a positive weight: what a good ranking
    # puts first.
    test: dict[str, set[int]]
    # "Now" for training: the end of the training data.
    cutoff: datetime


def split_log(
    events: list[LoggedEvent],
    method: str,
    weights: dict[str, float],
    relevant_from: float = 0.0,
) -> Split:
    """Split a log into training events and each visitor's hidden test items.

    temporal: everything before the time that leaves the last 20% of events is
    training; visitors with events on both sides are tested on their later items.
    leave-last-out: each visitor's last event is hidden (visitors with at least two).
    A hidden event is relevant when its weight is positive and at least
    `relevant_from`.
    """

    def relevant(event: LoggedEvent) -> bool:
        weight = weights.get(event.interaction_type, 0.0)
        return weight > 0 and weight >= relevant_from

    if method not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}")
    ordered = sorted(events, key=lambda e: (e.timestamp, e.user_id, e.item_id))
    if not ordered:
        raise ValueError("the log is empty")
    train: list[LoggedEvent] = []
    later: dict[str, set[int]] = defaultdict(set)
    if method == "temporal":
        cutoff = ordered[min(len(ordered) - 1, int(len(ordered) * (1 - TEST_SHARE)))]
        cutoff_time = cutoff.timestamp
        for event in ordered:
            if event.timestamp < cutoff_time:
                train.append(event)
            elif relevant(event):
                later[event.user_id].add(event.item_id)
    else:
        last: dict[str, LoggedEvent] = {}
        for event in ordered:
            last[event.user_id] = event
        counts: dict[str, int] = defaultdict(int)
        for event in ordered:
            counts[event.user_id] += 1
        for event in ordered:
            hidden = counts[event.user_id] >= 2 and event is last[event.user_id]
            if not hidden:
                train.append(event)
            elif relevant(event):
                later[event.user_id].add(event.item_id)
        cutoff_time = (
            max(e.timestamp for e in train) if train else ordered[-1].timestamp
        )
    trained_users = {e.user_id for e in train}
    test = {user: items for user, items in later.items() if user in trained_users}
    return Split(train, test, cutoff_time)


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
    """Run one strategy for every test visitor; average the metrics."""
    totals = defaultdict(float)
    recommended: set[int] = set()
    elapsed = 0.0
    for user, relevant in sorted(test.items()):
        started = time.perf_counter()
        ranked = rank(user)[:k]
        elapsed += time.perf_counter() - started
        recommended |= set(ranked)
        totals["ndcg"] += ndcg_at_k(ranked, relevant, k)
        totals["recall"] += recall_at_k(ranked, relevant, k)
        totals["precision"] += precision_at_k(ranked, relevant, k)
    users = max(1, len(test))
    return {
        f"ndcg@{k}": totals["ndcg"] / users,
        f"recall@{k}": totals["recall"] / users,
        f"precision@{k}": totals["precision"] / users,
        "coverage": len(recommended) / catalog_size if catalog_size else 0.0,
        "ms_per_ranking": elapsed * 1000 / users,
        "users": len(test),
    }


# Strategies: the engine's, each behind one signature (user id, k) -> item ids


def engine_strategies(engine, k: int) -> dict[str, Callable[[str], list[int]]]:
    """The site's ranking strategies, as the evaluation calls them."""

    def ids(entries) -> list[int]:
        return [entry[0] for entry in entries]

    def fill(personal: list[int]) -> list[int]:
        chosen = list(dict.fromkeys(personal))[:k]
        return chosen + ids(engine.popular("procedure", k - len(chosen), chosen))

    def popular(user: str) -> list[int]:
        return ids(engine.popular("procedure", k))

    def category_affinity(user: str) -> list[int]:
        """The product's original rule: the visitor's top categories' most popular
        procedures, category by category."""
        profile = engine.visitor_profile(user)
        popularity = dict(engine.popular_scores("procedure"))
        order = sorted(
            engine.procedures_in_categories(list(profile.affinities)),
            key=lambda row: (-profile.affinities[row[1]], -popularity.get(row[0], 0)),
        )
        return fill([pid for pid, _ in order])

    def covisitation(user: str) -> list[int]:
        profile = engine.visitor_profile(user)
        seeds = [tid for kind, tid in profile.history if kind == "procedure"]
        scores = engine.covisitation_scores(seeds[:10])
        return fill(sorted(scores, key=lambda pid: (-scores[pid], pid)))

    def blended(user: str) -> list[int]:
        ranking = engine.get_personalized_procedures(user, k)
        return [entry.item.id for entry in ranking]

    strategies = {
        "popular": popular,
        "category affinity": category_affinity,
        "co-visitation": covisitation,
        "blended (served)": blended,
    }
    if engine.reranker.enabled:
        strategies["personalize"] = blended  # re-ranked inside the engine
    return strategies


# The scratch database


def build_scratch_app(
    categories: Iterable[tuple[int, str]],
    items: Iterable[tuple[int, int]],
    split: Split,
    config: dict | None = None,
):
    """A throwaway app on its own SQLite file holding the catalog and the training
    events, with popularity, co-visitation and affinities computed as of the cutoff."""
    from flask_migrate import upgrade

    from app import create_app

    folder = Path(tempfile.mkdtemp(prefix="antidote-evaluate-"))
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{folder}/evaluate.db",
            "AWS_PERSONALIZE_SYNC_INTERVAL": 0,
            **(config or {}),
        }
    )
    engine = app.extensions["personalization_engine"]
    engine.clock = lambda: split.cutoff
    engine.stream_events = False
    with app.app_context():
        upgrade()
        db.session.execute(
            insert(Category),
            [
                {
                    "id": cid,
                    "name": f"{name} [{cid}]",
                    "slug": f"c{cid}",
                    "description": "",
                }
                for cid, name in categories
            ],
        )
        db.session.execute(
            insert(Procedure),
            [
                {
                    "id": pid,
                    "name": f"item {pid}",
                    "slug": f"i{pid}",
                    "category_id": cid,
                    "short_description": "",
                    "price_min": 0,
                    "price_max": 0,
                    "recovery_time": "",
                }
                for pid, cid in items
            ],
        )
        rows = [
            {
                "user_id": event.user_id,
                "session_id": "evaluation",
                "interaction_type": event.interaction_type,
                "target_type": "procedure",
                "target_id": event.item_id,
                "timestamp": event.timestamp,
            }
            for event in split.train
        ]
        for start in range(0, len(rows), 20_000):
            db.session.execute(insert(UserInteraction), rows[start : start + 20_000])
        db.session.commit()
        engine.refresh_statistics(now=split.cutoff)
        engine.rebuild_affinities(now=split.cutoff)
    return app


def evaluate_engine(app, split: Split, k: int, catalog_size: int) -> dict[str, dict]:
    """Score every engine strategy on the split; one row per strategy."""
    engine = app.extensions["personalization_engine"]
    results = {}
    with app.app_context():
        for name, rank in engine_strategies(engine, k).items():
            results[name] = score_rankings(rank, split.test, k, catalog_size)
            db.session.rollback()
    return results


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
