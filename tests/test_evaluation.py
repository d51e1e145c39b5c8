"""Offline evaluation: metric maths, splits, and a tiny log with a known answer."""

import json
import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from helpers import catalog_id
from models import Procedure
from personalization.evaluation import (
    coverage_and_error,
    mean_and_error,
    most_popular,
    ndcg_at_k,
    own_history,
    precision_at_k,
    recall_at_k,
    score_rankings,
    split_log,
    tune,
    validation_split,
)
from personalization.events import (
    DEFAULT_INTERACTION_WEIGHTS,
    Interaction,
    ItemKey,
    VisitorInteraction,
)
from personalization.settings import Settings
from replay import replay_system

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


def test_mostpop_on_a_tiny_log_with_hand_computed_ndcg():
    """Leave-last-out, seen items excluded, MostPop, k = 3 (see test_protocols for
    the split). Training: a 1, 2; b 1, 3; c 1, 4; d 5, 5. Items by how many
    visitors took them: 1 (3), then 2, 3, 4, 5 (1 each, by id).

    a: test {3}, without 1, 2 -> [3, 4, 5]: hit at rank 1, NDCG = 1.
    b: test {4}, without 1, 3 -> [2, 4, 5]: hit at rank 2,
       DCG = 1 / log2(2 + 1) = 0.63093, ideal 1 / log2(1 + 1) = 1, NDCG = 0.63093.
    c: test {2}, without 1, 4 -> [2, 3, 5]: NDCG = 1.
    Mean NDCG@3 = (1 + 0.63093 + 1) / 3 = 0.87698; deviations 0.12302, -0.24605,
    0.12302; sample variance (0.01513 + 0.06054 + 0.01513) / 2 = 0.04540;
    standard error sqrt(0.04540 / 3) = 0.12302.
    Recall@3 = 1 for everyone (standard error 0); precision@3 = 1/3.
    Coverage: 2, 3, 4, 5 listed, of 5 items = 0.8.
    Without the exclusion a would get [1, 2, 3]: 3 at rank 3, NDCG 1 / log2(4) = 0.5.
    """
    from test_protocols import tiny_log

    split = split_log(tiny_log(), "leave-last-out", DEFAULT_INTERACTION_WEIGHTS)
    rank = most_popular(split.train, DEFAULT_INTERACTION_WEIGHTS)
    row = score_rankings(rank, split.test, 3, 5, split.exclude)
    assert row["ndcg@3"] == pytest.approx((2 + 1 / math.log2(3)) / 3)
    assert row["ndcg@3"] == pytest.approx(0.87698, abs=1e-5)
    assert row["ndcg@3_se"] == pytest.approx(0.12302, abs=1e-5)
    assert row["recall@3"] == 1.0 and row["recall@3_se"] == 0.0
    assert row["precision@3"] == pytest.approx(1 / 3)
    assert row["coverage"] == pytest.approx(0.8)
    assert row["users"] == 3
    unfiltered = score_rankings(rank, {"a": {3}}, 3, 5)
    assert unfiltered["ndcg@3"] == pytest.approx(0.5)


def test_a_ranker_that_returns_a_seen_item_is_not_credited_for_it():
    def stubborn(visitor, excluded, k):
        return [1, 1, 2, 3]  # 1 and 2 are a's seen items, 1 twice

    row = score_rankings(stubborn, {"a": {1, 3}}, 2, 10, {"a": {1, 2}})
    # Left: [3]; relevant {1, 3} -> DCG 1, ideal 1 + 1 / log2(3).
    assert row["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_standard_error_of_a_mean():
    assert mean_and_error([]) == (0.0, 0.0)
    assert mean_and_error([0.5]) == (0.5, 0.0)
    # 0 and 1: sample sd sqrt(0.5), over sqrt(2) -> 0.5.
    assert mean_and_error([0.0, 1.0]) == (0.5, pytest.approx(0.5))


def test_coverage_and_its_bootstrap_error():
    same = [[1, 2]] * 20
    assert coverage_and_error(same, 10) == (0.2, 0.0)  # every resample covers 2
    varied = [[n] for n in range(20)]
    coverage, error = coverage_and_error(varied, 40)
    assert coverage == 0.5
    # A resample of 20 draws covers ~12.8 distinct of 20 (sd ~1.4): what the
    # error measures is how much coverage depends on which visitors were drawn.
    assert 0.02 < error < 0.06
    assert coverage_and_error(varied, 40, rounds=0) == (0.5, 0.0)


def test_own_history_ranks_by_recency_weighted_counts_and_tunes_on_validation():
    """Repeat-aware: c trained on 1, 4, 2 (oldest first) and comes back to 1.
    Decay 0.5 per step: 2 -> 1, 4 -> 0.5, 1 -> 0.25: [2, 4, 1], 1 at rank 3,
    NDCG 1 / log2(4) = 0.5. Plain counts (decay 1): a tie, by id: [1, 2, 4], 1."""
    from test_protocols import tiny_log

    split = split_log(tiny_log(), "repeat-aware", DEFAULT_INTERACTION_WEIGHTS)
    assert split.test["c"] == {1}
    weights = DEFAULT_INTERACTION_WEIGHTS
    recent = own_history(split.train, weights, 0.5)
    assert recent("c", set(), 3) == [2, 4, 1]
    assert own_history(split.train, weights, 1.0)("c", set(), 3) == [1, 2, 4]
    # A visitor with a short history is filled from MostPop.
    assert recent("d", set(), 3) == [5, 1, 2]
    only_c = {"c": {1}}
    assert score_rankings(recent, only_c, 3, 5)["ndcg@3"] == pytest.approx(0.5)

    validation = validation_split(split, weights)
    best, tried = tune(
        lambda part, params: own_history(part.train, weights, params["decay"]),
        [{"decay": 0.5}, {"decay": 1.0}],
        validation,
        3,
        5,
    )
    assert [params for params, _ in tried] == [{"decay": 0.5}, {"decay": 1.0}]
    assert best == max(tried, key=lambda pair: pair[1])[0]


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
    assert {
        "popular",
        "category affinity",
        "co-visitation",
        "blended (served)",
    } <= set(results)
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
        args=["personalization", "evaluate", "--protocol", "leave-last-out", "--k", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "| strategy | NDCG@5 |" in result.output
    assert "protocol leave-last-out" in result.output
    names = ("popular", "category affinity", "co-visitation", "blended (served)")
    for name in (*names, "most popular (all time)"):
        assert f"| {name} | " in result.output
    assert " ± " in result.output  # each figure with its standard error

    repeats = runner.invoke(
        args=["personalization", "evaluate", "--protocol", "repeat-aware"]
    )
    assert repeats.exit_code == 0, repeats.output
    assert "| own history (recency) | " in repeats.output
    assert "chosen on validation" in repeats.output


def test_evaluate_command_needs_a_log(runner, catalog):
    result = runner.invoke(args=["personalization", "evaluate"])
    assert result.exit_code != 0
    assert "not enough procedure interactions" in result.output


ROOT = Path(__file__).resolve().parents[1]


def synthetic_csv(path: Path) -> Path:
    """60 visitors over 24 items in 3 categories: each walks four items of one
    category in order, so what comes next is learnable."""
    rows = ["visitor_id,item_id,category_id,event_type,timestamp"]
    stamp = 1_700_000_000
    for visitor in range(60):
        category = visitor % 3
        start = visitor % 5
        for step in range(4):
            item = category * 8 + (start + step) % 8 + 1
            kind = "click" if step % 2 else "view"
            rows.append(f"v{visitor},{item},{category + 1},{kind},{stamp}")
            stamp += 60
    path.write_text("\n".join(rows) + "\n")
    return path


def test_public_bench_entry_point_prints_json_for_any_csv_log(tmp_path):
    """bench/evaluate_public.py --events FILE --json: leave-last-out, seen items
    excluded, one row per strategy with the figures and their standard errors."""
    log = synthetic_csv(tmp_path / "log.csv")
    result = subprocess.run(
        [sys.executable, "bench/evaluate_public.py", "--events", str(log), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    for name in ("popular", "blended (served)", "MostPop", "ItemKNN", "EASE"):
        assert {"ndcg@10", "ndcg@10_se", "recall@10", "coverage"} <= set(rows[name])
    assert rows["ALS (implicit)"]["params"].keys() == {
        "factors",
        "regularization",
        "alpha",
    }
    assert rows["popular"]["users"] == 60
    assert set(rows["blended (tuned)"]["params"]) == {
        "neighbour_regularization",
        "neighbours_per_item",
        "popularity_window_days",
        "history_window_days",
        "seed_recency_decay",
        "neighbour_category_weight",
    }
    # Each visitor's next item follows the walk: a neighbourhood method finds it.
    assert rows["ItemKNN"]["ndcg@10"] > rows["MostPop"]["ndcg@10"]


def test_ease_in_the_visitors_space_matches_the_closed_form():
    """Fewer visitors than items: EASE solved through Woodbury must give the
    scores of B = I - P / diag(P), P = (XᵀX + λI)⁻¹, computed directly."""
    import numpy as np

    from bench.references import Matrix, ease

    draw = np.random.default_rng(0)
    events = [
        logged(f"u{user}", int(item), "click", at(user))
        for user in range(6)
        for item in draw.choice(15, size=5, replace=False)
    ]
    matrix = Matrix(events, DEFAULT_INTERACTION_WEIGHTS)
    x = matrix.binary.toarray()
    inverse = np.linalg.inv(x.T @ x + 50 * np.eye(x.shape[1]))
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    expected = x @ weights
    rank = ease(matrix, 50)
    column = {item: index for index, item in enumerate(matrix.items)}
    for user, visitor in enumerate(matrix.users):
        found = [column[item] for item in rank(visitor, set(), 4)]
        # Items with the same column tie exactly; rounding may swap them.
        best = np.sort(expected[user])[::-1][:4]
        np.testing.assert_allclose(expected[user][found], best, atol=1e-9)


def trec_eval_means(lists: dict[str, list[int]], test: dict[str, set[int]]) -> dict:
    """NDCG@10, Recall@10 and P@10 of the same lists by trec_eval (through
    pytrec_eval), averaged over visitors: scores fall with rank, so its tie
    rule never reorders a list."""
    import pytrec_eval

    qrels = {v: {str(item): 1 for item in relevant} for v, relevant in test.items()}
    run = {
        v: {str(item): float(len(found) - place) for place, item in enumerate(found)}
        for v, found in lists.items()
    }
    measures = {"ndcg_cut_10", "recall_10", "P_10"}
    per_visitor = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    return {
        measure: sum(found[measure] for found in per_visitor.values()) / len(test)
        for measure in measures
    }


def assert_metrics_match_trec_eval(rank, test, exclude) -> None:
    lists: dict[str, list[int]] = {}

    def recorded(visitor, excluded, k):
        found = list(dict.fromkeys(i for i in rank(visitor, excluded, k)))
        lists[visitor] = [i for i in found if i not in excluded][:k]
        return found

    ours = score_rankings(recorded, test, 10, 1000, exclude, resample=False)
    reference = trec_eval_means(lists, test)
    assert ours["ndcg@10"] == pytest.approx(reference["ndcg_cut_10"], abs=1e-9)
    assert ours["recall@10"] == pytest.approx(reference["recall_10"], abs=1e-9)
    assert ours["precision@10"] == pytest.approx(reference["P_10"], abs=1e-9)


def test_metrics_match_trec_eval_on_random_lists():
    import random

    generator = random.Random(7)
    test = {
        f"v{n}": set(generator.sample(range(50), generator.randint(1, 12)))
        for n in range(300)
    }
    lists = {v: generator.sample(range(50), 10) for v in test}
    assert_metrics_match_trec_eval(lambda v, excluded, k: lists[v], test, {})


def test_metrics_match_trec_eval_on_the_movielens_runs():
    """The very lists the offline evaluation scores on MovieLens 100K (leave-last-
    out, seen items excluded), for MostPop and EASE."""
    from bench.evaluate_public import DATA, WEIGHTS, load_movielens
    from bench.references import Matrix, ease

    if not (DATA / "ml-100k" / "u.data").exists():
        pytest.skip(f"MovieLens 100K is not at {DATA / 'ml-100k'}")
    _, _, events, relevant_from = load_movielens()
    split = split_log(events, "leave-last-out", WEIGHTS, relevant_from)
    for rank in (
        most_popular(split.train, WEIGHTS),
        ease(Matrix(split.train, WEIGHTS), 100),
    ):
        assert_metrics_match_trec_eval(rank, split.test, split.exclude)
