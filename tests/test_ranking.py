"""The local ranking engine and the recommendations API."""

import re

import pytest
from sqlalchemy import event, select

from helpers import Browser, catalog_id
from models import (
    Category,
    ItemPopularity,
    Procedure,
    ProcedureCovisitation,
    db,
    doctor_procedures,
)
from personalization.events import Interaction, ItemKey

API = "/personalization/recommendations/"


def engine_of(app):
    return app.extensions["personalization"]


def record(app, user_id, *events):
    with app.app_context():
        engine_of(app).record_interactions(user_id, "s", list(events))


def views(*procedure_ids):
    return [Interaction("view", ItemKey("procedure", pid)) for pid in procedure_ids]


def procedure_ids(app, category_slug) -> list[int]:
    with app.app_context():
        return list(
            db.session.scalars(
                select(Procedure.id)
                .join(Category)
                .where(Category.slug == category_slug)
                .order_by(Procedure.id)
            )
        )


def section(html: str, section_id: str) -> list[str]:
    start = html.index(f'id="{section_id}"')
    part = html[start : html.index("</section>", start)]
    return re.findall(r'data-track-type="\w+" data-track-id="(\d+)"', part)


def test_a_fresh_visitor_sees_full_popular_sections(catalog, browser):
    html = browser.get("/").get_data(as_text=True)
    assert [len(section(html, s)) for s in ("categories", "procedures", "doctors")] == [
        6,
        6,
        6,
    ]
    for content_type, size in (("categories", 6), ("procedures", 6), ("doctors", 6)):
        body = browser.get(API + content_type).get_json()
        assert body["source"] == "popular" and body["personalized"] is False
        assert len(body["items"]) == size


def test_clicking_a_categorys_procedures_puts_it_first_everywhere(catalog, browser):
    hair = catalog_id(catalog, Category, "hair-restoration")
    hair_procedures = procedure_ids(catalog, "hair-restoration")
    browser.get("/")
    for pid in hair_procedures[:3]:
        assert (
            browser.track(
                {
                    "interaction_type": "click",
                    "target_type": "procedure",
                    "target_id": pid,
                }
            ).status_code
            == 202
        )
    with catalog.app_context():
        hair_doctors = set(
            db.session.scalars(
                select(doctor_procedures.c.doctor_id).where(
                    doctor_procedures.c.procedure_id.in_(hair_procedures)
                )
            )
        )
    html = browser.get("/").get_data(as_text=True)
    assert section(html, "categories")[0] == str(hair)
    assert set(map(int, section(html, "procedures")[:3])) <= set(hair_procedures)
    assert int(section(html, "doctors")[0]) in hair_doctors

    categories = browser.get(API + "categories").get_json()
    assert categories["items"][0]["id"] == hair
    assert categories["items"][0]["reason"] == "affinity"
    assert categories["personalized"] is True and categories["source"] == "mixed"
    procedures = browser.get(API + "procedures").get_json()
    assert procedures["source"] in ("affinity", "mixed")
    assert procedures["items"][0]["id"] in hair_procedures
    doctors = browser.get(API + "doctors").get_json()
    assert doctors["items"][0]["id"] in hair_doctors


def test_fallbacks_fill_the_section_without_repeats(catalog):
    skin = catalog_id(catalog, Category, "skin-tightening")
    record(catalog, "v" * 32, Interaction("click", ItemKey("category", skin)))
    with catalog.app_context():
        ranking = engine_of(catalog).recommend("category", "v" * 32, 6)
    ids = [entry.item.id for entry in ranking]
    assert len(ids) == 6 == len(set(ids))
    assert ids[0] == skin
    assert [entry.reason for entry in ranking] == ["affinity"] + ["popular"] * 5
    assert ranking.source == "mixed"


def test_every_ranking_has_its_full_count_on_an_empty_log(catalog):
    with catalog.app_context():
        engine = engine_of(catalog)
        for limit in (1, 6, 8):
            assert len(engine.recommend("category", None, limit)) == limit
        assert len(engine.recommend("procedure", "x" * 32, 50)) == 50
        assert len(engine.recommend("doctor", "x" * 32, 40)) == 40


def test_catalog_order_before_any_interaction(catalog):
    with catalog.app_context():
        engine = engine_of(catalog)
        categories = [e.item.slug for e in engine.recommend("category", None, 3)]
        doctors = [e.item for e in engine.recommend("doctor", None, 9)]
    assert categories == ["injectables", "skin-resurfacing", "laser-and-light"]
    ratings = [(d.rating, d.review_count) for d in doctors]
    assert ratings == sorted(ratings, reverse=True)


def test_covisitation_recommends_what_similar_visitors_viewed(catalog):
    botox, rhinoplasty, laser = (
        catalog_id(catalog, Procedure, slug)
        for slug in ("botox", "rhinoplasty", "laser-hair-removal")
    )
    for visitor in "abcdefg":
        record(catalog, visitor * 32, *views(botox, rhinoplasty))
    for visitor in "hijkl":  # five: the fewest a pair needs (MIN_VISITORS)
        record(catalog, visitor * 32, *views(botox, laser))
    record(catalog, "new".ljust(32, "x"), *views(botox))
    with catalog.app_context():
        engine = engine_of(catalog)
        engine.refresh_statistics()  # the served ranking's item neighbours
        similar = engine.similar(ItemKey("procedure", botox), 6)
        ranking = engine.recommend("procedure", "new".ljust(32, "x"), 6)
    assert [e.item.id for e in similar][:2] == [rhinoplasty, laser]
    assert similar.items[0].reason == "also_viewed"
    assert rhinoplasty in [e.item.id for e in ranking]
    reasons = {e.item.id: e.reason for e in ranking}
    assert reasons[rhinoplasty] == "also_viewed"


def test_covisitation_is_normalized_so_blockbusters_do_not_dominate(catalog):
    botox, niche, blockbuster = (
        catalog_id(catalog, Procedure, slug)
        for slug in ("botox", "otoplasty", "laser-hair-removal")
    )
    # Botox and the niche procedure share their 5 visitors; the blockbuster shares
    # 6 of Botox's visitors but is seen by 40 others.
    for i in range(5):
        record(catalog, f"niche{i}".ljust(32, "x"), *views(botox, niche))
    for i in range(6):
        record(catalog, f"both{i}".ljust(32, "x"), *views(botox, blockbuster))
    for i in range(40):
        record(catalog, f"crowd{i}".ljust(32, "x"), *views(blockbuster))
    with catalog.app_context():
        scores = engine_of(catalog).covisitation.neighbours([botox])
    assert scores[niche] > scores[blockbuster]


def test_similar_procedures_fall_back_to_the_same_category(catalog, client):
    botox = catalog_id(catalog, Procedure, "botox")
    injectables = set(procedure_ids(catalog, "injectables"))
    with catalog.app_context():
        similar = engine_of(catalog).similar(ItemKey("procedure", botox), 6)
    ids = [e.item.id for e in similar]
    assert len(ids) == 6 and botox not in ids
    assert set(ids) <= injectables
    assert {e.reason for e in similar} == {"same_category"}
    html = client.get("/procedures/botox").get_data(as_text=True)
    assert "Similar procedures" in html
    assert len(section(html, "similar")) == 6


def test_rankings_never_scan_the_interaction_log(catalog):
    """Every query a ranking makes on user_interactions is limited to one visitor."""
    visitor = "a" * 32
    record(catalog, visitor, *views(*procedure_ids(catalog, "injectables")[:3]))
    statements = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    with catalog.app_context():
        engine = engine_of(catalog)
        event.listen(db.engine, "before_cursor_execute", capture)
        try:
            engine.home_sections(visitor, {"category": 6, "procedure": 6, "doctor": 9})
            engine.similar(
                ItemKey("procedure", catalog_id(catalog, Procedure, "botox")), 6
            )
        finally:
            event.remove(db.engine, "before_cursor_execute", capture)
    touching_log = [s for s in statements if "user_interactions" in s]
    assert touching_log, "the visitor's history is read"
    for statement in touching_log:
        assert re.search(r"user_interactions\.user_id (=|IN) ", statement), statement
    # The profile (history, affinities, chosen city), each section's candidates
    # and items, the items that led to them ("because you viewed ..."), and the
    # item neighbours with popularity by category (read once per process per
    # POPULARITY_CACHE_SECONDS).
    assert len(statements) <= 19


def test_popular_rankings_are_cached_briefly(catalog):
    statements = []
    with catalog.app_context():
        engine = engine_of(catalog)
        engine.recommend("procedure", None, 6)
        event.listen(
            db.engine, "before_cursor_execute", lambda *args: statements.append(args[2])
        )
        engine.recommend("procedure", None, 6)
    assert not [s for s in statements if "item_popularity" in s]


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("clinics", 400, "content_type must be one of categories, procedures, doctors"),
        ("procedures?limit=0", 400, "limit must be a whole number from 1 to 50"),
        ("procedures?limit=51", 400, "limit must be a whole number from 1 to 50"),
        ("procedures?limit=abc", 400, "limit must be a whole number"),
        ("procedures?limit=-3", 400, "limit must be a whole number"),
        ("procedures?limit=%C2%B2", 400, "limit must be a whole number"),  # "²"
        ("procedures?limit=%D9%A3", 400, "limit must be a whole number"),  # Arabic 3
        ("doctors?item=botox", 400, "item is only supported for procedures"),
        ("procedures?item=no-such-thing", 404, "no procedure with slug"),
    ],
)
def test_recommendation_errors_are_json(catalog, client, path, status, message):
    response = client.get(API + path)
    assert response.status_code == status
    assert message in response.get_json()["error"]


def test_recommendations_shape_and_limits(catalog, browser):
    body = browser.get(API + "procedures?limit=3").get_json()
    assert set(body) == {"content_type", "list_id", "personalized", "source", "items"}
    assert body["content_type"] == "procedures"
    assert len(body["items"]) == 3
    first = body["items"][0]
    assert set(first) == {"id", "slug", "name", "url", "score", "reason", "why"}
    assert first["url"] == f"/procedures/{first['slug']}"
    assert len(browser.get(API + "doctors?limit=50").get_json()["items"]) == 40
    similar = browser.get(API + "procedures?item=botox&limit=4").get_json()
    assert len(similar["items"]) == 4
    assert "botox" not in [item["slug"] for item in similar["items"]]


def test_the_visitor_id_is_never_returned(catalog, browser):
    browser.get("/procedures/botox")
    with catalog.app_context():
        from models import UserInteraction

        visitor_id = db.session.scalar(select(UserInteraction.user_id))
    for content_type in ("categories", "procedures", "doctors"):
        text = browser.get(API + content_type).get_data(as_text=True)
        assert visitor_id not in text


def test_untracked_visitors_get_popular_recommendations(catalog):
    private = Browser(catalog, headers={"Sec-GPC": "1"})
    body = private.get(API + "categories").get_json()
    assert body["source"] == "popular" and body["personalized"] is False


def test_refresh_command_reports_what_it_rebuilt(catalog, runner):
    record(catalog, "a" * 32, *views(*procedure_ids(catalog, "injectables")[:2]))
    result = runner.invoke(args=["personalization", "refresh"])
    assert result.exit_code == 0, result.output
    assert "co-visitation pairs" in result.output
    assert "2 co-visitation pairs" in result.output


def test_history_reads_are_bounded_per_visitor(database_url, catalog):
    """A visitor (or bot) with a long history costs no more than HISTORY_ROWS rows."""
    from app import create_app
    from helpers import app_config

    app = create_app(app_config(database_url, HISTORY_ROWS=5))
    old, recent = (
        catalog_id(app, Procedure, slug) for slug in ("rhinoplasty", "botox")
    )
    with app.app_context():
        engine = engine_of(app)
        engine.record_interactions("h" * 32, "s", views(old))
        engine.record_interactions("h" * 32, "s", views(*[recent] * 6))
        both = engine.profiles.histories({"h" * 32, "g" * 32})
    assert [entry.item for entry in both["h" * 32]] == [ItemKey("procedure", recent)]
    assert set(both) == {"h" * 32}


def test_covisitation_survives_huge_visitor_counts(catalog):
    """Regression: visitors(a) * visitors(b) overflowed PostgreSQL's integer at 10M
    interactions (found by the ranking benchmark)."""
    from sqlalchemy import update

    botox, dysport = (catalog_id(catalog, Procedure, s) for s in ("botox", "dysport"))
    record(catalog, "a" * 32, *views(botox, dysport))
    with catalog.app_context():
        db.session.execute(update(ItemPopularity).values(visitors=200_000))
        db.session.execute(update(ProcedureCovisitation).values(visitors=150_000))
        db.session.commit()
        scores = engine_of(catalog).covisitation.neighbours([botox])
    assert scores == {dysport: 1.0}


def test_profile_state_follows_item_rows_and_never_reads_page_views(sqlite_url):
    """Every page reads the visitor's state; a visitor's page views must not make
    it slower (a plain max(id) had SQLite scan them: 5 ms at 4,000 views)."""
    from sqlalchemy import text

    from app import create_app
    from demo_catalog import seed_demo_catalog
    from helpers import app_config, empty_all_tables, migrate_to_head
    from personalization.profiles import STATE

    migrate_to_head(sqlite_url)
    app = create_app(app_config(sqlite_url))
    try:
        with app.app_context():
            seed_demo_catalog()
            engine = engine_of(app)
            botox = catalog_id(app, Procedure, "botox")
            engine.record_interactions("v" * 32, "s", views(botox))
            before = engine.profiles.state("v" * 32).latest
            engine.record_interactions(
                "v" * 32,
                "s",
                [Interaction("view", None)] * 3,  # bare page views
            )
            assert engine.profiles.state("v" * 32).latest == before
            engine.record_interactions("v" * 32, "s", views(botox))
            assert engine.profiles.state("v" * 32).latest > before

            statement = STATE.params(visitor="v" * 32, rows=500).compile(
                db.engine, compile_kwargs={"literal_binds": True}
            )
            plan = db.session.execute(text(f"EXPLAIN QUERY PLAN {statement}")).all()
        reads = [row[-1] for row in plan if "user_interactions" in row[-1]]
        assert reads and all("ix_user_interactions_item_history" in r for r in reads)
    finally:
        empty_all_tables(app)
