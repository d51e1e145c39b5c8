"""Offline evaluation: metric maths, splits, and a tiny log with a known answer."""

from datetime import UTC, datetime, timedelta

import pytest

from helpers import catalog_id
from models import Procedure
from personalization.evaluation import (
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    split_log,
)
from personalization.events import (
    DEFAULT_INTERACTION_WEIGHTS,
    Interaction,
    ItemKey,
    VisitorInteraction,
)
from personalization.settings import Settings
from personalization_system import replay_system

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def logged(visitor: str, item: int, kind: str, when: datetime) -> VisitorInteraction:
    """One procedure interaction of the log, as the evaluation reads it."""
    return VisitorInteraction(
        visitor, "s", Interaction(kind, ItemKey("procedure", item), occurred_at=when)
    )


def test_ndcg_recall_precision_on_known_rankings():
    assert ndcg_at_k([1, 2, 3], {1}, 3) == pytest.approx(1.0)
    assert ndcg_at_k([1, 2, 3], {2}, 3) == pytest.approx(1 / 1.5849625, rel=1e-6)
    assert ndcg_at_k([1, 2, 3], {1, 3}, 3) == pytest.approx(1.5 / 1.6309298, rel=1e-6)
    assert ndcg_at_k([1, 2, 3], {4}, 3) == 0.0
    assert ndcg_at_k([4, 5, 1], {1}, 2) == 0.0  # beyond k
    assert recall_at_k([1, 2, 3], {1, 3, 9, 10}, 3) == 0.5
    assert precision_at_k([1, 2, 3, 4], {1, 3, 9}, 4) == 0.5


def test_temporal_split_hides_the_last_fifth_by_time():
    events = [logged("u1", i, "view", at(i)) for i in range(8)] + [
        logged("u2", 100, "view", at(8)),  # only after the cutoff: not tested
        logged("u1", 50, "hide", at(9)),  # negative: not a relevant item
    ]
    split = split_log(events, "temporal", DEFAULT_INTERACTION_WEIGHTS)
    assert split.cutoff == at(8)
    assert [e.interaction.item.id for e in split.train] == list(range(8))
    assert split.test == {}  # u1's later event is negative, u2 has no training

    events.append(logged("u1", 60, "click", at(10)))
    split = split_log(events, "temporal", DEFAULT_INTERACTION_WEIGHTS)
    assert split.test == {"u1": {60}}


def test_leave_last_out_hides_each_visitors_last_event():
    events = [
        logged("a", 1, "view", at(1)),
        logged("a", 2, "click", at(2)),
        logged("b", 3, "view", at(3)),  # one event: kept for training only
    ]
    split = split_log(events, "leave-last-out", DEFAULT_INTERACTION_WEIGHTS)
    assert split.test == {"a": {2}}
    assert {(e.visitor_id, e.interaction.item.id) for e in split.train} == {
        ("a", 1),
        ("b", 3),
    }
    with pytest.raises(ValueError, match="split must be one of"):
        split_log(events, "random", DEFAULT_INTERACTION_WEIGHTS)


def test_a_tiny_log_with_a_known_answer():
    """Everyone who views item 1 also views item 2; item 3 is merely popular.
    Co-visitation must find item 2 for the test visitor; popularity cannot."""
    categories = [(1, "one"), (2, "two")]
    items = [(1, 1), (2, 2), (3, 2), (4, 1)]
    events = []
    for user in range(6):
        events += [
            logged(f"v{user}", 1, "view", at(user)),
            logged(f"v{user}", 2, "view", at(user + 0.5)),
            logged(f"v{user}", 4, "view", at(user + 0.7)),  # hidden
        ]
    for user in range(10):
        events += [
            logged(f"p{user}", 3, "click", at(user)),
            logged(f"p{user}", 3, "click", at(user + 0.1)),  # hidden
        ]
    events += [
        logged("test", 1, "view", at(20)),
        logged("test", 2, "click", at(30)),
    ]
    split = split_log(events, "leave-last-out", DEFAULT_INTERACTION_WEIGHTS)
    assert split.test["test"] == {2}
    replay = replay_system(categories, items, split, Settings())
    results = replay.evaluate({"test": {2}}, k=1, catalog_size=4)
    assert results["popular"]["ndcg@1"] == 0.0  # item 3 is the most popular
    assert results["co-visitation"]["ndcg@1"] == 1.0
    assert results["co-visitation"]["recall@1"] == 1.0
    assert results["co-visitation"]["coverage"] == 0.25
    assert set(results) == {
        "popular",
        "category affinity",
        "co-visitation",
        "blended (served)",
    }
    assert all(row["users"] == 1 for row in results.values())


def test_evaluate_command_prints_the_table(catalog, runner):
    engine = catalog.extensions["personalization"]
    ids = [
        catalog_id(catalog, Procedure, slug)
        for slug in ("botox", "dysport", "xeomin", "rhinoplasty")
    ]
    with catalog.app_context():
        for user in range(5):
            engine.record_interactions(
                f"user{user}".ljust(32, "x"),
                "s",
                [Interaction("view", ItemKey("procedure", pid)) for pid in ids[:3]],
                now=datetime.now(UTC) - timedelta(days=2, hours=user),
            )
        engine.record_interactions(
            "late".ljust(32, "x"),
            "s",
            [Interaction("view", ItemKey("procedure", ids[0]))],
            now=datetime.now(UTC) - timedelta(days=1),
        )
        engine.record_interactions(
            "late".ljust(32, "x"),
            "s",
            [Interaction("click", ItemKey("procedure", ids[1]))],
        )
    result = runner.invoke(
        args=["personalization", "evaluate", "--split", "leave-last-out", "--k", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "| strategy | NDCG@5 |" in result.output
    for name in ("popular", "category affinity", "co-visitation", "blended (served)"):
        assert f"| {name} |" in result.output


def test_evaluate_command_needs_a_log(runner, catalog):
    result = runner.invoke(args=["personalization", "evaluate"])
    assert result.exit_code != 0
    assert "not enough procedure interactions" in result.output
