"""Item neighbours: cosine similarity of visitor sets, precomputed by refresh,
with the privacy floor and the cap per item; and the ranking built on them."""

import math
from datetime import timedelta

import pytest
from sqlalchemy import select

from app import create_app
from helpers import app_config
from models import ProcedureNeighbour, db, utcnow
from personalization.events import Interaction, ItemKey, VisitorInteraction
from personalization.profiles import anonymous

# The catalog's procedure ids, in order: test n stands for the n-th (ids differ
# between databases).
IDS: list[int] = []


def procedure(n: int) -> ItemKey:
    return ItemKey("procedure", IDS[n - 1])


def number(procedure_id: int) -> int:
    return IDS.index(procedure_id) + 1


@pytest.fixture(autouse=True)
def catalog_ids(catalog):
    from models import Procedure

    with catalog.app_context():
        IDS[:] = db.session.scalars(select(Procedure.id).order_by(Procedure.id)).all()


def record(system, visitor: str, *items: int, kind="click", days_ago: float = 1):
    when = utcnow() - timedelta(days=days_ago)
    events = [Interaction(kind, procedure(n), None, when) for n in items]
    system.record([VisitorInteraction(visitor, "s", event) for event in events])


@pytest.fixture
def system(database_url, catalog):
    app = create_app(app_config(database_url, MIN_VISITORS=2, NEIGHBOURS_PER_ITEM=2))
    with app.app_context():
        yield app.extensions["personalization"]


def stored(system) -> dict[tuple[int, int], float]:
    rows = system.session.execute(
        select(
            ProcedureNeighbour.procedure_id,
            ProcedureNeighbour.neighbour_id,
            ProcedureNeighbour.similarity,
        )
    )
    return {(number(a), number(b)): similarity for a, b, similarity in rows}


def test_similarity_is_the_cosine_of_visitor_sets(system):
    """Visitors of 1: v1 v2 v3; of 2: v1 v2; of 3: v3 v4; of 4: v4 (alone).
    shared(1, 2) = 2 -> 2 / sqrt(3 * 2) = 0.8165; shared(1, 3) = 1, under the
    floor of 2 visitors (MIN_VISITORS): never stored, nor anything of 4."""
    record(system, "v1", 1, 2)
    record(system, "v2", 1, 2)
    record(system, "v3", 1, 3)
    record(system, "v4", 3, 4)
    system.refresh_statistics()
    assert stored(system) == {
        (1, 2): pytest.approx(2 / math.sqrt(6)),
        (2, 1): pytest.approx(2 / math.sqrt(6)),
    }


def test_negative_signals_and_old_events_make_no_neighbours(database_url, catalog):
    app = create_app(app_config(database_url, MIN_VISITORS=2, NEIGHBOUR_WINDOW_DAYS=30))
    with app.app_context():
        system = app.extensions["personalization"]
        for visitor in ("v1", "v2"):
            record(system, visitor, 1, 2, kind="not_interested")
            record(system, visitor, 3, 4, days_ago=60)
        system.refresh_statistics()
        assert stored(system) == {}


def test_each_procedure_keeps_its_best_neighbours_only(system):
    for visitor in ("v1", "v2", "v3"):
        record(system, visitor, 1, 2, 3, 4)
    record(system, "v4", 1, 2)  # 2 is 1's nearest; then 3 and 4 tie
    system.refresh_statistics()
    of_one = sorted(b for a, b in stored(system) if a == 1)
    assert of_one == [2, 3]  # NEIGHBOURS_PER_ITEM=2; a tie goes to the lower id


def test_the_ranking_puts_neighbours_of_what_they_had_first(system):
    for visitor in ("v1", "v2", "v3"):
        record(system, visitor, 1, 2)
    for visitor in ("v4", "v5"):
        record(system, visitor, 3, 4)
    record(system, "me", 1)
    system.refresh_statistics()
    ranking = system.recommenders.by_name()["item neighbours"]
    found = ranking.recommend(system.profiles.load("me"), "procedure", 5)
    assert found[0].item == procedure(2)
    assert found[0].because == procedure(1)
    assert procedure(1) not in [s.item for s in found[:4]]  # what they had: last
    assert len(found) == 5
    # Similar items are the neighbours first.
    assert [s.item for s in ranking.similar(procedure(3), 1)] == [procedure(4)]
    # A visitor nothing is known of gets popular procedures.
    assert len(ranking.recommend(anonymous(), "procedure", 5)) == 5


def test_repeat_consumption_keeps_what_they_had(database_url, catalog):
    app = create_app(app_config(database_url, MIN_VISITORS=2, REPEAT_CONSUMPTION=1))
    with app.app_context():
        system = app.extensions["personalization"]
        for visitor in ("v1", "v2"):
            record(system, visitor, 1, 2)
        record(system, "me", 1, 1, 1)
        system.refresh_statistics()
        ranking = system.recommenders.by_name()["item neighbours"]
        found = ranking.recommend(system.profiles.load("me"), "procedure", 3)
        assert procedure(1) in [s.item for s in found[:2]]
        assert db.session.scalar(select(ProcedureNeighbour.similarity).limit(1))
