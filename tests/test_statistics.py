"""Each statistic's two versions, fed the same events: the Python rule applied as
interactions arrive, and its SQL twin that rebuilds from the log."""

import threading
from datetime import timedelta

import pytest
from sqlalchemy import literal, select

from helpers import catalog_id
from models import (
    Category,
    Doctor,
    ItemPopularity,
    Package,
    Procedure,
    ProcedureCovisitation,
    UserCategoryAffinity,
    db,
    sql_time,
    utcnow,
)
from personalization.events import Interaction, ItemKey
from personalization.items import category_shares_sql
from personalization.statistics import (
    aged_weight,
    decayed,
    sql_aged_weight,
    sql_decayed,
)


def system_of(app):
    return app.extensions["personalization"]


def record(app, visitor_id, *interactions):
    with app.app_context():
        system_of(app).record_interactions(visitor_id, "s", list(interactions))


def views(*procedure_ids):
    return [Interaction("view", ItemKey("procedure", pid)) for pid in procedure_ids]


def affinities(app) -> dict[tuple[str, int], float]:
    with app.app_context():
        rows = db.session.execute(
            select(
                UserCategoryAffinity.user_id,
                UserCategoryAffinity.category_id,
                UserCategoryAffinity.affinity_score,
            )
        )
        return {(user, category): round(score, 6) for user, category, score in rows}


def test_incremental_statistics_match_a_full_refresh(catalog):
    botox, dysport, peel = (
        catalog_id(catalog, Procedure, slug)
        for slug in ("botox", "dysport", "chemical-peel")
    )
    doctor = catalog_id(catalog, Doctor, "dr-sofia-vargas")
    record(
        catalog,
        "a" * 32,
        *views(botox, dysport),
        Interaction("click", ItemKey("doctor", doctor)),
    )
    record(catalog, "b" * 32, *views(dysport, peel))
    record(catalog, "a" * 32, *views(peel, botox))

    def snapshot():
        with catalog.app_context():
            popularity = {
                (r.target_type, r.target_id): (round(r.score, 4), r.visitors)
                for r in db.session.scalars(select(ItemPopularity))
                if r.target_type != "category"
            }
            categories = {
                r.target_id: (round(r.score, 4), r.visitors)
                for r in db.session.scalars(select(ItemPopularity))
                if r.target_type == "category"
            }
            pairs = {
                (r.procedure_id, r.other_id): r.visitors
                for r in db.session.scalars(select(ProcedureCovisitation))
            }
        return popularity, categories, pairs

    incremental = snapshot()
    with catalog.app_context():
        system_of(catalog).refresh_statistics()
    refreshed = snapshot()
    assert incremental == refreshed
    assert refreshed[2][(botox, dysport)] == 1 and refreshed[2][(dysport, peel)] == 2


def test_incremental_affinities_match_a_rebuild_from_the_log(catalog):
    """Clicks, a doctor, a package, a hide and old webhook events, applied as they
    come, end where a rebuild from the log ends (searches aside: they rank live)."""
    botox, peel = (
        catalog_id(catalog, Procedure, s) for s in ("botox", "chemical-peel")
    )
    doctor = catalog_id(catalog, Doctor, "dr-sofia-vargas")
    package = catalog_id(catalog, Package, "mommy-makeover-plus")
    injectables = catalog_id(catalog, Category, "injectables")
    now = utcnow()
    with catalog.app_context():
        system = system_of(catalog)
        system.record_interactions(
            "a" * 32,
            "s",
            [
                Interaction("click", ItemKey("procedure", botox)),
                Interaction("view", ItemKey("doctor", doctor)),
                Interaction("form_submit", ItemKey("package", package)),
                Interaction("hide", ItemKey("category", injectables)),
            ],
            now=now,
        )
        system.record_interactions(
            "b" * 32,
            "s",
            [
                Interaction(
                    "bookmark",
                    ItemKey("procedure", peel),
                    occurred_at=now - timedelta(days=3),
                ),
                Interaction(
                    "click",
                    ItemKey("procedure", botox),
                    occurred_at=now - timedelta(days=10),
                ),
            ],
            now=now,
        )
    incremental = affinities(catalog)
    with catalog.app_context(), system.transaction():
        system.affinity.rebuild(now)
    assert affinities(catalog) == pytest.approx(incremental)
    assert len(incremental) >= 4


def test_decay_and_weights_agree_in_python_and_sql(catalog):
    now = utcnow()
    weights = system_of(catalog).settings.interaction_weights
    with catalog.app_context():
        for days in (0, 0.5, 3, 40):
            then = now - timedelta(days=days)
            in_sql = db.session.scalar(
                select(sql_decayed(literal(0.8), sql_time(then), 0.9, now))
            )
            assert in_sql == pytest.approx(decayed(0.8, then, now, 0.9))
            for kind in ("view", "bookmark", "hide", "unheard-of"):
                in_sql = db.session.scalar(
                    select(
                        sql_aged_weight(
                            weights, literal(kind), sql_time(then), 0.95, now
                        )
                    )
                )
                interaction = Interaction(kind, occurred_at=then)
                in_python = aged_weight(weights, interaction, 0.95, now)
                assert in_sql == pytest.approx(in_python)


def test_category_shares_agree_in_python_and_sql(catalog):
    """A doctor or a package spreads over its procedures' categories the same way
    in both versions."""
    with catalog.app_context():
        system = system_of(catalog)
        keys = [
            ItemKey(kind, item_id)
            for kind, model in (
                ("doctor", Doctor),
                ("package", Package),
                ("procedure", Procedure),
                ("category", Category),
            )
            for item_id in db.session.scalars(select(model.id))
        ]
        in_python = system.items.category_shares(keys)
        shares = category_shares_sql()
        in_sql: dict[ItemKey, dict[int, float]] = {}
        for kind, item_id, category_id, share in db.session.execute(select(shares)):
            in_sql.setdefault(ItemKey(kind, item_id), {})[category_id] = share
    assert set(in_sql) == set(in_python)
    for key, split in in_python.items():
        assert in_sql[key] == pytest.approx(split)
    assert any(len(split) > 1 for split in in_python.values())


# One person's browsing never shows in what everyone sees


def anonymous_order(app, kind: str) -> list[int]:
    with app.app_context():
        ranking = system_of(app).recommend(kind, None, 60)
        return [entry.item.id for entry in ranking]


def test_one_persons_clicks_never_reorder_popular_for_everyone(catalog):
    """Below MIN_VISITORS (5) distinct visitors an item or a category counts for
    nothing in what others see, however often one person clicks it."""
    niche = catalog_id(catalog, Procedure, "otoplasty")
    category = catalog_id(catalog, Category, "hair-restoration")
    before = anonymous_order(catalog, "procedure"), anonymous_order(catalog, "category")
    for visitor in ("one", "two", "three", "four"):
        for _ in range(5):
            record(
                catalog,
                visitor.ljust(32, "x"),
                Interaction("form_submit", ItemKey("procedure", niche)),
                Interaction("form_submit", ItemKey("category", category)),
            )
        system_of(catalog).popularity.clear_cache()
        after = (
            anonymous_order(catalog, "procedure"),
            anonymous_order(catalog, "category"),
        )
        assert after == before, f"{visitor} visitors moved the popular lists"
    record(catalog, "five".ljust(32, "x"), *views(niche))
    record(
        catalog,
        "five".ljust(32, "x"),
        Interaction("click", ItemKey("category", category)),
    )
    system_of(catalog).popularity.clear_cache()
    assert anonymous_order(catalog, "procedure")[0] == niche
    assert anonymous_order(catalog, "category")[0] == category


def test_a_pair_seen_by_a_few_people_is_nobodys_also_viewed(catalog):
    botox, niche = (catalog_id(catalog, Procedure, s) for s in ("botox", "otoplasty"))
    for i in range(4):
        record(catalog, f"pair{i}".ljust(32, "x"), *views(botox, niche))
    with catalog.app_context():
        assert niche not in system_of(catalog).covisitation.neighbours([botox])
    record(catalog, "pair4".ljust(32, "x"), *views(botox, niche))
    with catalog.app_context():
        assert niche in system_of(catalog).covisitation.neighbours([botox])


def test_a_visitors_parallel_requests_count_them_once(catalog):
    """Eight tabs of one visitor open the same procedure at once: one distinct
    visitor, not up to eight (which would also fake a crowd)."""
    niche = catalog_id(catalog, Procedure, "otoplasty")
    visitor = "tabs".ljust(32, "x")
    barrier = threading.Barrier(8)
    errors = []

    def open_tab():
        try:
            with catalog.app_context():
                barrier.wait()
                system_of(catalog).record_interactions(visitor, "s", views(niche))
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=open_tab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with catalog.app_context():
        category_id = db.session.get(Procedure, niche).category_id
        procedure = db.session.get(ItemPopularity, ("procedure", niche))
        category = db.session.get(ItemPopularity, ("category", category_id))
        assert (procedure.visitors, category.visitors) == (1, 1)
        assert procedure.score == pytest.approx(0.8, rel=1e-3)  # every view counts
