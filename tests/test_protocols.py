"""Evaluation protocols on a tiny log: which items are test, which are training,
which are left out of every list; the validation split; the seeded sample."""

from datetime import UTC, datetime, timedelta

import pytest

from personalization.events import (
    DEFAULT_INTERACTION_WEIGHTS,
    Interaction,
    ItemKey,
    VisitorInteraction,
)
from personalization.protocols import split_log, validation_split

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WEIGHTS = DEFAULT_INTERACTION_WEIGHTS


def logged(visitor: str, item: int, hours: float, kind: str = "click"):
    return VisitorInteraction(
        visitor,
        "s",
        Interaction(
            kind, ItemKey("procedure", item), occurred_at=T0 + timedelta(hours=hours)
        ),
    )


def tiny_log() -> list[VisitorInteraction]:
    """a: 1, 2, 3. b: 1, 3, 4. c: 1, 4, 2, then 1 again. d: 5 twice."""
    return [
        logged("a", 1, 0),
        logged("a", 2, 1),
        logged("a", 3, 2),
        logged("b", 1, 0),
        logged("b", 3, 1),
        logged("b", 4, 2),
        logged("c", 1, 0),
        logged("c", 4, 1),
        logged("c", 2, 2),
        logged("c", 1, 3),
        logged("d", 5, 0),
        logged("d", 5, 1),
    ]


def pairs(split) -> set[tuple[str, int]]:
    return {(e.visitor_id, e.interaction.item.id) for e in split.train}


def test_leave_last_out_hides_each_visitors_last_new_item():
    split = split_log(tiny_log(), "leave-last-out", WEIGHTS)
    # c's last event is a repeat of item 1: their last *new* item is 2, and what
    # came after it is neither training nor test. d never met a second item.
    assert split.test == {"a": {3}, "b": {4}, "c": {2}}
    assert split.exclude == {"a": {1, 2}, "b": {1, 3}, "c": {1, 4}}
    assert pairs(split) == {("a", 1), ("a", 2), ("b", 1), ("b", 3), ("c", 1)} | {
        ("c", 4),
        ("d", 5),
    }
    assert len(split.train) == 8  # d's two events both train
    assert split.cutoff == T0 + timedelta(hours=1)  # the last training event
    assert split.protocol == "leave-last-out"


def test_temporal_hides_each_visitors_last_fifth_and_only_new_items_count():
    split = split_log(tiny_log(), "temporal", WEIGHTS)
    # ceil(0.8 * 3) = 3 is capped at 2 training events for a and b; c trains on
    # its first ceil(0.8 * 4) = 4 -> 3 and hides the repeat of 1, which a
    # seen-excluded protocol cannot count: c and d are not tested.
    assert split.test == {"a": {3}, "b": {4}}
    assert split.exclude == {"a": {1, 2}, "b": {1, 3}}
    assert ("c", 2) in pairs(split) and ("d", 5) in pairs(split)
    assert len(split.train) == 2 + 2 + 4 + 2  # untested visitors keep everything


def test_repeat_aware_keeps_seen_items_and_counts_repeats():
    split = split_log(tiny_log(), "repeat-aware", WEIGHTS)
    assert split.test == {"a": {3}, "b": {4}, "c": {1}, "d": {5}}
    assert split.exclude == {"a": set(), "b": set(), "c": set(), "d": set()}
    assert pairs(split) == {
        ("a", 1),
        ("a", 2),
        ("b", 1),
        ("b", 3),
        ("c", 1),
        ("c", 4),
        ("c", 2),
        ("d", 5),
    }


def test_a_negative_or_weak_last_item_is_not_a_test_item():
    log = [
        logged("a", 1, 0),
        logged("a", 2, 1, "click"),
        logged("a", 3, 2, "hide"),  # negative: not relevant, skipped
    ]
    split = split_log(log, "leave-last-out", WEIGHTS)
    assert split.test == {"a": {2}}
    assert pairs(split) == {("a", 1)}  # the hide came after the test item
    # MovieLens counts ratings of 4-5 only (click and up).
    strict = split_log(
        log[:1] + [logged("a", 2, 1, "view")], "leave-last-out", WEIGHTS, 0.3
    )
    assert strict.test == {}


def test_validation_applies_the_protocol_to_the_training_part():
    split = split_log(tiny_log(), "leave-last-out", WEIGHTS)
    validation = validation_split(split, WEIGHTS)
    # Training: a 1, 2; b 1, 3; c 1, 4; d 5, 5.
    assert validation.test == {"a": {2}, "b": {3}, "c": {4}}
    assert validation.exclude == {"a": {1}, "b": {1}, "c": {1}}
    assert not any(
        item in validation.test.get(e.visitor_id, set())
        for e in validation.train
        for item in [e.interaction.item.id]
    )
    assert split.test == {"a": {3}, "b": {4}, "c": {2}}  # untouched


def test_test_visitors_are_a_seeded_sample_and_the_rest_train_on_everything():
    log = [
        logged(f"v{n:03}", item, item + n / 100) for n in range(50) for item in (1, 2)
    ]
    first = split_log(log, "leave-last-out", WEIGHTS, max_visitors=10, seed=7)
    again = split_log(log, "leave-last-out", WEIGHTS, max_visitors=10, seed=7)
    other = split_log(log, "leave-last-out", WEIGHTS, max_visitors=10, seed=8)
    assert len(first.test) == 10 and first.test == again.test
    assert set(other.test) != set(first.test)
    assert len(first.train) == 100 - 10


def test_unknown_protocol_and_empty_log_are_refused():
    with pytest.raises(ValueError, match="protocol must be one of"):
        split_log(tiny_log(), "random", WEIGHTS)
    with pytest.raises(ValueError, match="empty"):
        split_log([], "temporal", WEIGHTS)


@pytest.mark.parametrize(
    ("dataset", "protocols"),
    [
        ("ml-100k", ("leave-last-out", "temporal")),
        ("taobao", ("leave-last-out", "temporal", "repeat-aware")),
    ],
)
def test_the_public_logs_give_at_least_500_test_visitors(dataset, protocols):
    """Both public logs, every protocol that applies to them: enough test visitors
    for a standard error worth quoting, none of them tested on a training item
    where seen items are left out, and a validation split as large."""
    from helpers import shared_data

    if dataset == "ml-100k":
        shared_data("ml-100k", "u.data")
    else:
        shared_data("taobao-userbehavior-head", "UserBehavior_head.csv")
    from bench import evaluate_public

    loader = {
        "ml-100k": evaluate_public.load_movielens,
        "taobao": evaluate_public.load_taobao,
    }[dataset]
    _, _, events, relevant_from = loader()
    for protocol in protocols:
        split = split_log(events, protocol, WEIGHTS, relevant_from)
        validation = validation_split(split, WEIGHTS, relevant_from)
        assert len(split.test) >= 500, protocol
        assert len(validation.test) >= 500, protocol
        trained: dict[str, set[int]] = {}
        for entry in split.train:
            trained.setdefault(entry.visitor_id, set()).add(entry.interaction.item.id)
        for visitor, items in split.test.items():
            if protocol == "repeat-aware":
                assert not split.exclude[visitor]
            else:
                assert split.exclude[visitor] == trained[visitor]
                assert not items & trained[visitor]
