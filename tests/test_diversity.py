"""Diversity: at most N procedures of one category in a list's top 10, the
others waiting in their order; off (0) by default."""

from app import create_app
from helpers import Browser, app_config
from models import Procedure, db
from personalization.events import ItemKey
from personalization.ranking import DIVERSE_TOP, spread
from personalization.recommenders import Scored


def scored(*ids: int) -> list[Scored]:
    return [
        Scored(ItemKey("procedure", i), 1.0 - n / 100, "affinity")
        for n, i in enumerate(ids)
    ]


def ids(entries: list[Scored]) -> list[int]:
    return [entry.item.id for entry in entries]


def test_at_most_n_of_a_category_in_the_top():
    category = {1: "a", 2: "a", 3: "a", 4: "b", 5: "b", 6: "c", 7: "a"}
    assert ids(spread(scored(1, 2, 3, 4, 5, 6, 7), category, 2, 5)) == [1, 2, 4, 5, 6]
    # Beyond what the top can take, the others follow in their order.
    assert ids(spread(scored(1, 2, 3, 4, 5, 6, 7), category, 2, 7)) == [
        *(1, 2, 4, 5, 6),
        *(3, 7),
    ]
    # Scores never rise down the list.
    result = spread(scored(1, 2, 3, 4, 5, 6, 7), category, 1, 7)
    assert [e.score for e in result] == sorted((e.score for e in result), reverse=True)


def test_only_the_top_is_spread():
    category = {i: "a" for i in range(1, 30)}
    category.update({100: "b"})
    many = scored(*range(1, 30), 100)
    result = ids(spread(many, category, DIVERSE_TOP, 30))
    assert result == [*range(1, 30), 100]  # N = 10 in a top 10: nothing moves
    assert ids(spread(many, category, 3, 5)) == [1, 2, 3, 100, 4]


def test_the_home_page_spreads_categories_when_asked(database_url, catalog):
    def categories_shown(max_per_category: int) -> list[int]:
        app = create_app(app_config(database_url, MAX_PER_CATEGORY=max_per_category))
        browser = Browser(app)
        for slug in ("botox", "lip-fillers", "dermal-fillers"):
            browser.get(f"/procedures/{slug}")
        system = app.extensions["personalization"]
        with app.test_request_context():
            section = system.recommend("procedure", visitor_of(app, browser), 6)
            return [
                db.session.get(Procedure, entry.item.id).category_id
                for entry in section
            ]

    plain, spread_out = categories_shown(0), categories_shown(1)
    assert len(plain) == len(spread_out) == 6
    assert len(set(spread_out)) > len(set(plain))
    # Every category the pool offered comes once before any comes twice.
    distinct = len(set(spread_out))
    assert len(set(spread_out[:distinct])) == distinct


def visitor_of(app, browser) -> str:
    from visitor import cookie_serializer

    with app.test_request_context():
        return cookie_serializer().loads(browser.cookie("antidote_visitor"))
