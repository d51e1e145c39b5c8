"""Category affinities: which categories an event raises, decay maths, concurrency."""

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from helpers import catalog_id
from models import (
    Category,
    Doctor,
    Package,
    Procedure,
    UserCategoryAffinity,
    db,
    utcnow,
)
from personalization.events import Interaction, ItemKey

VISITOR = "a" * 32


def engine_of(app):
    return app.extensions["personalization"]


def stored_scores(app, user_id=VISITOR) -> dict[int, float]:
    with app.app_context():
        return dict(
            db.session.execute(
                select(
                    UserCategoryAffinity.category_id,
                    UserCategoryAffinity.affinity_score,
                ).where(UserCategoryAffinity.user_id == user_id)
            ).all()
        )


def record(app, *events, now=None, user_id=VISITOR):
    with app.app_context():
        engine_of(app).record_interactions(user_id, "session", list(events), now=now)


def test_a_procedure_counts_for_its_category(catalog):
    injectables = catalog_id(catalog, Category, "injectables")
    record(
        catalog,
        Interaction(
            "click", ItemKey("procedure", catalog_id(catalog, Procedure, "botox"))
        ),
    )
    assert stored_scores(catalog) == pytest.approx({injectables: 0.3})


def test_weights_follow_the_table(catalog):
    category = catalog_id(catalog, Category, "injectables")
    for kind, weight in [("view", 0.1), ("click", 0.3), ("form_submit", 0.5)]:
        user = kind.ljust(32, "x")
        record(catalog, Interaction(kind, ItemKey("category", category)), user_id=user)
        assert stored_scores(catalog, user) == pytest.approx({category: weight})


def test_doctor_and_package_share_the_weight_across_their_categories(catalog):
    with catalog.app_context():
        doctor = db.session.scalars(select(Doctor).order_by(Doctor.id)).first()
        per_category = {}
        for procedure in doctor.procedures:
            per_category[procedure.category_id] = (
                per_category.get(procedure.category_id, 0) + 1
            )
        doctor_id, total = doctor.id, len(doctor.procedures)
        package = db.session.scalars(
            select(Package).filter_by(slug="mommy-makeover-plus")
        ).one()
        package_categories = {p.category_id for p in package.procedures}
        package_id = package.id
    record(catalog, Interaction("click", ItemKey("doctor", doctor_id)))
    expected = {cid: 0.3 * n / total for cid, n in per_category.items()}
    assert stored_scores(catalog) == pytest.approx(expected)
    assert sum(stored_scores(catalog).values()) == pytest.approx(0.3)

    record(
        catalog, Interaction("click", ItemKey("package", package_id)), user_id="p" * 32
    )
    assert set(stored_scores(catalog, "p" * 32)) == package_categories
    assert sum(stored_scores(catalog, "p" * 32).values()) == pytest.approx(0.3)


def test_a_search_counts_for_the_categories_of_its_top_results(catalog):
    body = catalog_id(catalog, Category, "body-contouring")
    record(catalog, Interaction("search", None, {"query": "coolsculpting"}))
    assert stored_scores(catalog) == pytest.approx({body: 0.2})
    record(catalog, Interaction("search", None, {"query": "zzz"}), user_id="z" * 32)
    assert stored_scores(catalog, "z" * 32) == {}


def test_page_views_raise_no_affinity(catalog):
    record(catalog, Interaction("view", None, {"path": "/"}))
    assert stored_scores(catalog) == {}


def test_score_decays_between_updates_and_caps_at_one(catalog):
    category = catalog_id(catalog, Category, "injectables")
    # Time runs forward from now: the aggregator folds rows in as of the later
    # of its clock and their own time (an old row decays first, then adds).
    start = utcnow()
    record(
        catalog, Interaction("form_submit", ItemKey("category", category)), now=start
    )
    later = start + timedelta(days=10)
    record(catalog, Interaction("click", ItemKey("category", category)), now=later)
    expected = 0.5 * 0.95**10 + 0.3
    assert stored_scores(catalog)[category] == pytest.approx(expected, rel=1e-6)
    for _ in range(5):
        record(
            catalog,
            Interaction("form_submit", ItemKey("category", category)),
            now=later,
        )
    assert stored_scores(catalog)[category] == pytest.approx(1.0)


def test_reads_apply_the_same_decay_without_a_write(catalog):
    category = catalog_id(catalog, Category, "injectables")
    start = utcnow()
    record(
        catalog, Interaction("form_submit", ItemKey("category", category)), now=start
    )
    with catalog.app_context():
        now = start + timedelta(days=20)
        read = engine_of(catalog).affinity.of_visitor(VISITOR, now=now)
    assert read[category] == pytest.approx(0.5 * 0.95**20, rel=1e-6)
    assert stored_scores(catalog)[category] == pytest.approx(0.5)


def test_negative_weights_lower_affinity_but_not_below_zero(database_url, catalog):
    from app import create_app
    from helpers import app_config

    app = create_app(app_config(database_url, INTERACTION_WEIGHTS={"hide": -0.15}))
    category = catalog_id(app, Category, "injectables")
    now = utcnow()
    record(app, Interaction("click", ItemKey("category", category)), now=now)
    record(app, Interaction("hide", ItemKey("category", category)), now=now)
    assert stored_scores(app)[category] == pytest.approx(0.15)
    record(
        app,
        Interaction("hide", ItemKey("category", category)),
        Interaction("hide", ItemKey("category", category)),
    )
    assert stored_scores(app)[category] == pytest.approx(0.0)
    # A first event that is negative starts from zero, too.
    record(app, Interaction("hide", ItemKey("category", category)), user_id="n" * 32)
    assert stored_scores(app, "n" * 32)[category] == 0.0


def test_concurrent_updates_lose_nothing(catalog):
    """Parallel requests for one visitor and category add up exactly."""
    category = catalog_id(catalog, Category, "injectables")
    workers = 8
    barrier = threading.Barrier(workers)
    errors = []

    def view_category():
        try:
            with catalog.app_context():
                barrier.wait()
                engine_of(catalog).record_interactions(
                    VISITOR,
                    "session",
                    [Interaction("view", ItemKey("category", category))],
                )
        except Exception as error:  # surfaced below, with the thread's error
            errors.append(error)

    threads = [threading.Thread(target=view_category) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    # 8 views of 0.1 within a second: decay over that time is below 1e-6.
    assert stored_scores(catalog)[category] == pytest.approx(0.8, abs=1e-5)
    with catalog.app_context():
        assert len(engine_of(catalog).affinity.of_visitor(VISITOR)) == 1


def test_concurrent_http_requests_lose_no_event(catalog):
    """Parallel tracker batches from one visitor: every event stored and counted."""
    from helpers import Browser, stored_interactions

    category = catalog_id(catalog, Category, "skin-resurfacing")
    batches = 4
    # One browser, several tabs: one visitor.
    first = Browser(catalog)
    first.csrf_token()
    tabs = [first] + [first.new_tab() for _ in range(batches - 1)]
    barrier = threading.Barrier(batches)
    statuses = []
    event = {
        "interaction_type": "view",
        "target_type": "category",
        "target_id": category,
    }

    def send_batch(tab):
        barrier.wait()
        statuses.append(tab.track(event, event).status_code)

    threads = [threading.Thread(target=send_batch, args=(tab,)) for tab in tabs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses == [202] * batches
    rows = [r for r in stored_interactions(catalog) if r.target_id == category]
    assert len(rows) == batches * 2
    assert len({r.user_id for r in rows}) == 1
    assert stored_scores(catalog, rows[0].user_id)[category] == pytest.approx(
        0.1 * batches * 2, abs=1e-5
    )
