"""Page activity held between aggregator runs (personalization/page_buffer.py):
a page's bare view and the lists it showed wait in the server process and are
stored together; the view of an item is stored before the page answers; an
erasure in between drops what was held of the visitor; a failed store keeps
the rows; a server stores what it holds soon, and when it stops."""

import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from helpers import Browser, WebVisitor, seeded_site
from models import (
    ErasedVisitor,
    PendingInteraction,
    RecommendationImpression,
    UserInteraction,
    db,
    utcnow,
)
from personalization.events import Interaction, VisitorInteraction
from personalization.page_buffer import PageBuffer

PAGE_VIEWS = UserInteraction.target_type == "page"


def holding(app):
    """The app's system as a server process runs it: a background aggregator
    stores held pages (here: the test, calling upkeep)."""
    system = app.extensions["personalization"]
    system.aggregate_inline = False
    return system


def count(app, model, *where) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model).where(*where))


def visitor_of(app) -> str:
    """The one visitor who has impressions stored."""
    with app.app_context():
        return db.session.scalars(select(RecommendationImpression.user_id)).first()


def test_a_page_holds_its_view_and_lists_until_the_next_run(catalog):
    system = holding(catalog)
    browser = Browser(catalog)
    before = utcnow()
    assert browser.get("/").status_code == 200
    assert count(catalog, UserInteraction) == 0
    assert count(catalog, RecommendationImpression) == 0
    held = len(system.page_buffer)
    with catalog.app_context():
        system.upkeep()
    assert count(catalog, UserInteraction, PAGE_VIEWS) == 1
    assert count(catalog, RecommendationImpression) == held - 1 > 0
    assert len(system.page_buffer) == 0
    with catalog.app_context():
        stored = db.session.scalars(select(UserInteraction.timestamp)).one()
    # The time of the page, not of the store.
    assert before - timedelta(seconds=1) <= stored.replace(tzinfo=before.tzinfo)
    # What the visitor downloads includes what this process held.
    browser.get("/")
    with catalog.app_context():
        visitor_id = db.session.scalars(select(UserInteraction.user_id)).one()
        system.visitor_data(visitor_id)
    assert count(catalog, UserInteraction, PAGE_VIEWS) == 2


def test_the_view_of_an_item_is_stored_before_the_page_answers(catalog):
    """Rankings read it (recently viewed, affinities): the next page must know."""
    holding(catalog)
    browser = Browser(catalog)
    assert browser.get("/procedures/botox").status_code == 200
    assert count(catalog, PendingInteraction, PendingInteraction.target_id > 0) == 1
    assert count(catalog, RecommendationImpression) == 0  # its lists wait


def test_what_is_held_of_a_visitor_erased_meanwhile_is_dropped(catalog):
    """The erasure may run in another process than the one holding the rows:
    the store reads erased_visitors, under the lock erasures take."""
    system = holding(catalog)
    erased, kept = Browser(catalog, "203.0.113.7"), Browser(catalog, "203.0.113.8")
    erased.get("/")
    kept.get("/")
    with catalog.app_context():
        views, shown = system.page_buffer.take()
        gone = views[0].visitor_id
        system.page_buffer.add(views, shown)
        system.forget_visitor(gone)
        system.upkeep()
    assert count(catalog, UserInteraction, UserInteraction.user_id == gone) == 0
    assert (
        count(
            catalog, RecommendationImpression, RecommendationImpression.user_id == gone
        )
        == 0
    )
    assert count(catalog, UserInteraction, PAGE_VIEWS) == 1  # the other visitor's
    assert count(catalog, ErasedVisitor, ErasedVisitor.user_id == gone) == 1


def test_with_events_streamed_to_personalize_lists_are_stored_at_once(
    database_url, catalog
):
    """A click on a card is streamed with the list the card was in, read from
    the database as the click is recorded: a list held in a server process
    would be missing. So with streaming on, a page holds only its bare view."""
    import json

    from test_impressions import cards

    from helpers import personalize_app
    from models import PersonalizeOutbox

    app = personalize_app(database_url)
    holding(app)
    browser = Browser(app)
    html = browser.get("/").get_data(as_text=True)
    assert count(app, RecommendationImpression) > 0
    assert count(app, UserInteraction, PAGE_VIEWS) == 0  # the view waits
    kind, item, list_id, position = cards(html, "procedures")[1]
    card = {"list_id": list_id, "position": position}
    click = {"interaction_type": "click", "target_type": kind, "target_id": item}
    assert browser.track({**click, "metadata": card}).status_code == 202
    with app.app_context():
        streamed = db.session.scalars(select(PersonalizeOutbox.impression)).one()
    shown = [f"{kind}:{other}" for kind, other, _, _ in cards(html, "procedures")]
    assert json.loads(streamed) == shown


def test_a_full_buffer_is_stored_by_the_page_that_fills_it(catalog):
    system = holding(catalog)
    system.page_buffer.limit = 2  # a home page holds its view and its lists
    Browser(catalog).get("/")
    assert count(catalog, UserInteraction, PAGE_VIEWS) == 1
    assert count(catalog, RecommendationImpression) > 0
    assert len(system.page_buffer) == 0


def test_a_failed_store_holds_the_rows_for_the_next_run(catalog, monkeypatch):
    system = holding(catalog)
    Browser(catalog).get("/")
    held = len(system.page_buffer)

    def database_gone(rows):
        raise OperationalError("INSERT", {}, Exception("server closed the connection"))

    with catalog.app_context():
        monkeypatch.setattr(system.impressions, "store", database_gone)
        with pytest.raises(OperationalError):
            system.store_held_pages()
        assert len(system.page_buffer) == held
        assert count(catalog, UserInteraction) == 0  # rolled back with the rest
        monkeypatch.undo()
        assert system.store_held_pages() == held
    assert count(catalog, UserInteraction, PAGE_VIEWS) == 1


def test_while_the_database_is_away_the_newest_rows_are_kept_up_to_the_limit():
    buffer = PageBuffer(limit=3)
    views = [
        VisitorInteraction(f"{i:032x}", "s", Interaction("view")) for i in range(4)
    ]
    shown = [{"user_id": f"{i:032x}"} for i in range(2)]
    buffer.add(views[3:], [])
    assert buffer.put_back(views[:3], shown) == 3
    held_views, held_shown = buffer.take()
    assert [v.visitor_id for v in held_views] == [f"{3:032x}"]
    assert held_shown == shown


def test_without_a_background_aggregator_each_page_stores_its_own(catalog):
    """Tests, `flask run` with AGGREGATION_INTERVAL_SECONDS=0: nothing is held."""
    Browser(catalog).get("/")
    assert count(catalog, UserInteraction, PAGE_VIEWS) == 1
    assert count(catalog, RecommendationImpression) > 0


# The real site under gunicorn


@pytest.mark.serial
def test_a_server_stores_held_pages_soon(app, database_url):
    with seeded_site(database_url, workers=2) as site:  # the default interval
        visitor = WebVisitor(site.url)
        for _ in range(3):
            assert visitor.get("/").status_code == 200
        shown = time.monotonic()
        while count(app, UserInteraction, PAGE_VIEWS) < 3:
            assert time.monotonic() - shown < 5, site.output()
            time.sleep(0.1)
        assert count(app, RecommendationImpression) >= 3
        assert "Traceback" not in site.output()


@pytest.mark.serial
def test_a_stopping_server_stores_what_it_holds(app, database_url):
    """A restart or a deploy (SIGTERM) loses no page views: the aggregator is
    a minute off, so only the workers' exit stores them."""
    with seeded_site(
        database_url, workers=2, AGGREGATION_INTERVAL_SECONDS="60"
    ) as site:
        visitor = WebVisitor(site.url)
        for _ in range(4):
            assert visitor.get("/").status_code == 200
        assert count(app, UserInteraction, PAGE_VIEWS) == 0
    assert count(app, UserInteraction, PAGE_VIEWS) == 4
    assert count(app, RecommendationImpression) >= 4
