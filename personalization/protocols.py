"""Evaluation protocols: split an interaction log into training and each test
visitor's hidden items the way the field does, and carve a validation split from
the training part the same way.

leave-last-out: each visitor's last interaction with an item they had not met
before is the test item. temporal: each visitor's own interactions, ordered by
time, the last 20% are the test part. In both, the visitor's training items are
excluded from every method's list (the standard for logs where nobody takes the
same item twice, as in RecBole, Elliot or LensKit). repeat-aware: the temporal
split where seen items stay candidates and the test part counts repeats, for
logs where visitors come back to what they saw (Taobao; the site's own traffic).
"""

import math
import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from personalization.events import VisitorInteraction

PROTOCOLS = ("leave-last-out", "temporal", "repeat-aware")
# The share of each visitor's interactions, by time, that temporal splits hide.
TEST_SHARE = 0.2
# How many visitors a split tests at most, drawn with a fixed seed.
MAX_TEST_VISITORS = 1000
SEED = 0


@dataclass
class Split:
    train: list[VisitorInteraction]
    # Each test visitor's hidden items with a positive weight: what a good ranking
    # puts first.
    test: dict[str, set[int]]
    # "Now" for training: the time of the last training interaction.
    cutoff: datetime
    # Items no method may rank for a test visitor: their training items (empty
    # under repeat-aware).
    exclude: dict[str, set[int]] = field(default_factory=dict)
    protocol: str = "leave-last-out"


def split_log(
    log: list[VisitorInteraction],
    protocol: str,
    weights: Mapping[str, float],
    relevant_from: float = 0.0,
    max_visitors: int = MAX_TEST_VISITORS,
    seed: int = SEED,
) -> Split:
    """Split a log of procedure interactions by `protocol` (see the module).

    A hidden interaction is relevant when its weight is positive and at least
    `relevant_from`. Visitors with a training interaction and a relevant hidden
    item can be tested; past `max_visitors` of them, a seeded sample is, and the
    others train on their whole history. Whatever a tested visitor did after their
    test part began is neither training nor test.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
    if not log:
        raise ValueError("the log is empty")

    def relevant(entry: VisitorInteraction) -> bool:
        weight = weights.get(entry.interaction.type, 0.0)
        return weight > 0 and weight >= relevant_from

    by_visitor: dict[str, list[VisitorInteraction]] = defaultdict(list)
    for entry in log:
        by_visitor[entry.visitor_id].append(entry)
    held: dict[str, tuple[list[VisitorInteraction], set[int]]] = {}
    for visitor, entries in by_visitor.items():
        entries.sort(key=lambda e: (e.interaction.occurred_at, e.interaction.item.id))
        cut = (
            last_new_item(entries, relevant)
            if protocol == "leave-last-out"
            else temporal_cut(len(entries))
        )
        if cut is None:
            continue
        past, later = entries[:cut], entries[cut:]
        seen = {e.interaction.item.id for e in past}
        if protocol == "leave-last-out":
            hidden = {later[0].interaction.item.id}
        else:
            hidden = {e.interaction.item.id for e in later if relevant(e)}
            if protocol == "temporal":
                hidden -= seen
        if past and hidden:
            held[visitor] = (past, hidden)
    chosen = sorted(held)
    if len(chosen) > max_visitors:
        chosen = sorted(random.Random(seed).sample(chosen, max_visitors))
    tested = set(chosen)
    train = [
        entry
        for visitor, entries in by_visitor.items()
        for entry in (held[visitor][0] if visitor in tested else entries)
    ]
    train.sort(key=lambda e: (e.interaction.occurred_at, e.visitor_id))
    test = {visitor: held[visitor][1] for visitor in chosen}
    exclude = {
        visitor: {e.interaction.item.id for e in held[visitor][0]}
        if protocol != "repeat-aware"
        else set()
        for visitor in chosen
    }
    if not train:
        raise ValueError("no interaction is left for training")
    cutoff = max(e.interaction.occurred_at for e in train)
    return Split(train, test, cutoff, exclude, protocol)


def last_new_item(entries: list[VisitorInteraction], relevant) -> int | None:
    """The position of the visitor's last relevant interaction with an item they
    had not met before it (not their first interaction), or None."""
    first_seen: dict[int, int] = {}
    for position, entry in enumerate(entries):
        first_seen.setdefault(entry.interaction.item.id, position)
    for position in range(len(entries) - 1, 0, -1):
        entry = entries[position]
        if first_seen[entry.interaction.item.id] == position and relevant(entry):
            return position
    return None


def temporal_cut(count: int) -> int | None:
    """Where a visitor's test part begins: the first 80% (rounded up) train, at
    least one interaction is hidden. None for a single interaction."""
    if count < 2:
        return None
    return min(count - 1, math.ceil(count * (1 - TEST_SHARE)))


def validation_split(
    split: Split,
    weights: Mapping[str, float],
    relevant_from: float = 0.0,
    max_visitors: int = MAX_TEST_VISITORS,
    seed: int = SEED,
) -> Split:
    """The same protocol applied again to a split's training part: tune on this,
    never on the test items."""
    return split_log(
        split.train, split.protocol, weights, relevant_from, max_visitors, seed
    )
