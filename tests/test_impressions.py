"""Impressions: every recommendation list shown to a tracked visitor is recorded,
one row per list, and a click on one of its cards names the list and position."""

import json
import re

from sqlalchemy import select

from helpers import Browser
from models import RecommendationImpression, db


def shown(app) -> list[RecommendationImpression]:
    with app.app_context():
        rows = db.session.scalars(
            select(RecommendationImpression).order_by(
                RecommendationImpression.list_name
            )
        ).all()
        db.session.expunge_all()
        return rows


def cards(html: str, section_id: str) -> list[tuple[str, int, str, int]]:
    """(kind, item id, list id, position) of each card in a section."""
    start = html.index(f'id="{section_id}"')
    part = html[start : html.index("</section>", start)]
    return [
        (kind, int(item), list_id, int(position))
        for kind, item, list_id, position in re.findall(
            r'data-track-type="(\w+)" data-track-id="(\d+)" '
            r'data-list-id="(\w+)" data-position="(\d+)"',
            part,
        )
    ]


def test_the_home_page_records_each_list_it_shows(catalog, browser):
    html = browser.get("/").get_data(as_text=True)
    lists = {row.list_name: row for row in shown(catalog)}
    assert set(lists) == {"home:procedure", "home:doctor", "home:category"}
    assert len({row.request_id for row in lists.values()}) == 1
    for section, name in (
        ("procedures", "home:procedure"),
        ("doctors", "home:doctor"),
        ("categories", "home:category"),
    ):
        row = lists[name]
        on_page = cards(html, section)
        assert [(item, position) for _, item, _, position in on_page] == [
            (item_id, position)
            for position, (item_id, _) in enumerate(json.loads(row.items), 1)
        ]
        assert {list_id for _, _, list_id, _ in on_page} == {row.id}
        assert {source for _, source in json.loads(row.items)} == {"fallback"}


def test_personal_lists_record_their_sources(catalog, browser):
    browser.get("/procedures/botox")
    browser.get("/procedures/lip-fillers")
    browser.get("/")
    home = [r for r in shown(catalog) if r.list_name == "home:procedure"][-1]
    sources = [source for _, source in json.loads(home.items)]
    assert sources[0] == "engine"
    similar = [r for r in shown(catalog) if r.list_name == "procedure:similar"]
    assert len(similar) == 2 and all(r.item_kind == "procedure" for r in similar)


def test_untracked_visitors_are_not_counted(catalog):
    private = Browser(catalog, headers={"Sec-GPC": "1"})
    private.get("/")
    private.get("/procedures/botox")
    private.get("/personalization/recommendations/doctors")
    assert shown(catalog) == []


def test_the_api_names_its_list(catalog, browser):
    body = browser.get("/personalization/recommendations/doctors?top_k=3").get_json()
    [row] = shown(catalog)
    assert (row.id, row.list_name, row.item_kind) == (
        body["list_id"],
        "api:doctors",
        "doctor",
    )
    assert [item_id for item_id, _ in json.loads(row.items)] == [
        item["id"] for item in body["items"]
    ]


def test_a_click_names_its_list_and_position(catalog, browser):
    html = browser.get("/").get_data(as_text=True)
    kind, item, list_id, position = cards(html, "procedures")[2]
    answer = browser.track(
        {
            "interaction_type": "click",
            "target_type": kind,
            "target_id": item,
            "metadata": {"list_id": list_id, "position": position},
        }
    )
    assert answer.status_code == 202
    data = browser.get("/privacy/download").get_json()
    [click] = [i for i in data["interactions"] if i["type"] == "click"]
    assert click["details"] == {"list_id": list_id, "position": 3}
    assert {entry["list"] for entry in data["recommendations_shown"]} >= {
        "home:procedure"
    }


def test_impressions_are_forgotten_and_expire(catalog, browser):
    browser.get("/")
    other = Browser(catalog, address="198.51.100.5")
    other.get("/")
    assert len(shown(catalog)) == 6
    browser.post("/personalization/forget", json={})
    assert len(shown(catalog)) == 3
