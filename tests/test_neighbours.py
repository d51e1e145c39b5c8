"""Item neighbours: EASE weights over who had what, precomputed by refresh,
with the privacy floor and the cap per item; and the ranking built on them."""

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


def test_weights_are_eases_on_the_pairs_enough_visitors_share(database_url, catalog):
    """Visitors of 1: v1 v2 v3; of 2: v1 v2; of 3: v3 v4; of 4: v4 (under the
    floor of MIN_VISITORS=2: left out). Over items 1, 2, 3 the Gram matrix is
    G = [[3, 2, 1], [2, 2, 0], [1, 0, 2]]; with lambda = 1, A = G + I has
    determinant 21 and P = A^-1 has P11 = 9/21, P22 = 11/21, P12 = -6/21, so
    B12 = -P12 / P22 = 6/11 and B21 = -P12 / P11 = 2/3. The pair (1, 3) is
    shared by one visitor only: never stored."""
    app = create_app(
        app_config(database_url, MIN_VISITORS=2, NEIGHBOUR_REGULARIZATION=1)
    )
    with app.app_context():
        system = app.extensions["personalization"]
        record(system, "v1", 1, 2)
        record(system, "v2", 1, 2)
        record(system, "v3", 1, 3)
        record(system, "v4", 3, 4)
        system.refresh_statistics()
        assert stored(system) == {
            (1, 2): pytest.approx(6 / 11),
            (2, 1): pytest.approx(2 / 3),
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
    ranking = system.recommenders.by_name()["blended (served)"]
    found = ranking.recommend(system.profiles.load("me"), "procedure", 5)
    assert found[0].item == procedure(2)
    assert found[0].because == procedure(1)
    assert procedure(1) not in [s.item for s in found[:4]]  # what they had: last
    assert len(found) == 5
    # Similar items are the neighbours first.
    assert [s.item for s in ranking.similar(procedure(3), 1)] == [procedure(4)]
    # A visitor nothing is known of gets popular procedures.
    assert len(ranking.recommend(anonymous(), "procedure", 5)) == 5


def test_repeat_consumption_ranks_what_they_came_back_to_first(database_url, catalog):
    """With REPEAT_CONSUMPTION, own procedures lead by recency-weighted visits
    (REPEAT_DECAY per later visit): newest first, three visits to 1 count
    1 + 0.9 + 0.81 = 2.71, the earlier ones to 5 and 6 0.9^3 and 0.9^4; with
    HISTORY_WEIGHT 10 they come before neighbours, even outside their category's
    most popular (POPULAR_LIST_SIZE=1)."""
    app = create_app(
        app_config(
            database_url,
            MIN_VISITORS=2,
            REPEAT_CONSUMPTION=1,
            REPEAT_DECAY=0.9,
            HISTORY_WEIGHT=10,
            POPULAR_LIST_SIZE=1,
        )
    )
    with app.app_context():
        system = app.extensions["personalization"]
        for visitor in ("v1", "v2"):
            record(system, visitor, 1, 2)
        record(system, "me", 6, days_ago=4)
        record(system, "me", 5, days_ago=3)
        for days_ago in (2.5, 2, 1.5):
            record(system, "me", 1, days_ago=days_ago)
        system.refresh_statistics()
        profile = system.profiles.load("me")
        assert profile.returns == {
            IDS[0]: pytest.approx(2.71),
            IDS[4]: pytest.approx(0.729),
            IDS[5]: pytest.approx(0.6561),
        }
        found = system.recommenders.served.recommend(profile, "procedure", 4)
        assert [s.item for s in found[:3]] == [procedure(1), procedure(5), procedure(6)]
        assert found[0].reason == "viewed"
        assert found[3].item == procedure(2)  # then 1's neighbour


def test_refresh_reports_its_progress_over_visitors(system):
    for visitor in ("v1", "v2", "v3"):
        record(system, visitor, 1, 2)
    reports = []
    system.refresh_statistics(
        progress=lambda done, total: reports.append((done, total))
    )
    assert reports[-1] == (3, 3)


def test_a_visitor_with_no_neighbours_gets_their_category_explained(system):
    """One click on procedure 1 (no pair is shared by two visitors): its category's
    procedures lead, each saying which category brought it."""
    record(system, "me", 1)
    system.refresh_statistics()
    ranking = system.recommenders.served
    found = ranking.recommend(system.profiles.load("me"), "procedure", 3)
    category = system.items.procedure_candidates((), [IDS[0]])[IDS[0]]
    assert found[0].reason == "affinity"
    assert found[0].because == ItemKey("category", category)
    assert procedure(1) not in [s.item for s in found]  # what they had goes last


def test_the_history_window_is_its_own_setting(database_url, catalog):
    """A click 60 days ago is out of a 30-day popularity window but within a
    90-day history window: it still leads to its neighbours."""
    app = create_app(
        app_config(
            database_url,
            MIN_VISITORS=2,
            POPULARITY_WINDOW_DAYS=30,
            HISTORY_WINDOW_DAYS=90,
        )
    )
    with app.app_context():
        system = app.extensions["personalization"]
        for visitor in ("v1", "v2"):
            record(system, visitor, 1, 2)
        record(system, "me", 1, days_ago=60)
        system.refresh_statistics()
        assert system.profiles.load("me").recent == [procedure(1)]
        found = system.recommenders.served.recommend(
            system.profiles.load("me"), "procedure", 1
        )
        assert found[0].item == procedure(2) and found[0].reason == "also_viewed"
