"""Recommendation feedback: clicked / dismissed through the API, the "Not
interested" button on recommended cards, and each visitor's stats."""

import re

import pytest

from app import create_app
from helpers import Browser, app_config, catalog_id, stored_interactions
from models import Procedure

FEEDBACK = "/api/recommendations/feedback"
STATS = "/api/recommendations/stats"


def home_cards(browser) -> list[tuple[int, str, int]]:
    """(procedure id, list id, position) of the home page's procedure cards."""
    html = browser.get("/").get_data(as_text=True)
    start = html.index('id="procedures"')
    part = html[start : html.index("</section>", start)]
    return [
        (int(item), list_id, int(position))
        for item, list_id, position in re.findall(
            r'data-track-type="procedure" data-track-id="(\d+)" '
            r'data-list-id="(\w+)" data-position="(\d+)"',
            part,
        )
    ]


def test_stats_count_shown_clicked_and_dismissed(catalog, browser):
    assert browser.get(STATS).get_json() == {
        "shown": 0,
        "clicked": 0,
        "dismissed": 0,
        "click_through_rate": None,
    }
    cards = home_cards(browser)
    item, list_id, position = cards[0]
    clicked = browser.post(
        FEEDBACK,
        json={
            "item_type": "procedure",
            "item_id": item,
            "feedback": "clicked",
            "list_id": list_id,
            "position": position,
        },
    )
    assert clicked.status_code == 202, clicked.get_json()
    dismissed = browser.post(
        FEEDBACK,
        json={
            "item_type": "procedure",
            "item_id": cards[1][0],
            "feedback": "dismissed",
        },
    )
    assert dismissed.status_code == 202
    stats = browser.get(STATS).get_json()
    # The home page showed 3 lists of 6 (procedures, doctors, categories).
    assert stats == {
        "shown": 18,
        "clicked": 1,
        "dismissed": 1,
        "click_through_rate": round(1 / 18, 4),
    }
    # A plain click the tracker sent outside any list is not a recommendation click.
    browser.track(
        {"interaction_type": "click", "target_type": "procedure", "target_id": item}
    )
    assert browser.get(STATS).get_json()["clicked"] == 1


def test_not_interested_removes_the_item_from_the_visitors_lists(catalog, browser):
    browser.get("/procedures/botox")
    browser.get("/procedures/lip-fillers")
    item, list_id, position = home_cards(browser)[0]
    page = browser.get("/").get_data(as_text=True)
    assert "Not interested" in page
    answer = browser.post(
        "/recommendations/not-interested",
        data={
            "item_type": "procedure",
            "item_id": str(item),
            "list_id": list_id,
            "position": str(position),
            "next": "/",
        },
    )
    assert answer.status_code == 303 and answer.headers["Location"] == "/"
    home = browser.get("/").get_data(as_text=True)
    assert "we won&#39;t recommend that again" in home
    assert item not in [card[0] for card in home_cards(browser)]
    assert ("not_interested", "procedure", item) in [
        row[1:] for row in stored_interactions(catalog)
    ]
    assert browser.get(STATS).get_json()["dismissed"] == 1


@pytest.mark.parametrize(
    "body, message",
    [
        (
            {"item_type": "procedure", "item_id": 1, "feedback": "liked"},
            "feedback must",
        ),
        ({"item_type": "procedure", "item_id": 1}, "feedback must"),
        ({"item_type": "nothing", "item_id": 1, "feedback": "clicked"}, ""),
        ({"item_type": "procedure", "item_id": 999999, "feedback": "clicked"}, ""),
        ({"item_type": "procedure", "item_id": "x", "feedback": "clicked"}, ""),
        (
            {"item_type": "procedure", "item_id": 1, "feedback": "clicked", "x": 1},
            "unknown field",
        ),
        (
            {
                "item_type": "procedure",
                "item_id": 1,
                "feedback": "clicked",
                "list_id": "<b>",
            },
            "list_id must be",
        ),
        (
            {
                "item_type": "procedure",
                "item_id": 1,
                "feedback": "clicked",
                "position": 0,
            },
            "position must be",
        ),
        (
            {
                "item_type": "procedure",
                "item_id": 1,
                "feedback": "clicked",
                "position": True,
            },
            "position must be",
        ),
        ([], "JSON object"),
        ("clicked", "JSON object"),
    ],
)
def test_bad_feedback_is_refused_and_stores_nothing(catalog, browser, body, message):
    answer = browser.post(FEEDBACK, json=body)
    assert answer.status_code == 400
    assert message in answer.get_json()["error"]
    assert stored_interactions(catalog) == []


def test_feedback_needs_the_csrf_token(database_url, catalog):
    app = create_app(app_config(database_url, WTF_CSRF_ENABLED=True))
    botox = catalog_id(catalog, Procedure, "botox")
    answer = app.test_client().post(
        FEEDBACK,
        json={"item_type": "procedure", "item_id": botox, "feedback": "clicked"},
    )
    assert answer.status_code == 403
    assert "error" in answer.get_json()


def test_untracked_visitors_feedback_is_ignored(catalog):
    private = Browser(catalog, headers={"Sec-GPC": "1"})
    botox = catalog_id(catalog, Procedure, "botox")
    answer = private.post(
        FEEDBACK,
        json={"item_type": "procedure", "item_id": botox, "feedback": "dismissed"},
    )
    assert answer.status_code == 202 and answer.get_json()["accepted"] == 0
    assert stored_interactions(catalog) == []
    assert private.get(STATS).get_json()["shown"] == 0
