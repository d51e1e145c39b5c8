"""Personalization a visitor can see: "because you viewed ...", a "recently
viewed" strip, "for you" lists that bring something new, and the API's
`top_k` and `algorithm` parameters."""

import pytest

from helpers import Browser, catalog_id
from models import Procedure
from personalization.ranking import explain


def section(html: str, section_id: str) -> str:
    start = html.index(f'id="{section_id}"')
    return html[start : html.index("</section>", start)]


def procedure_links(html: str) -> list[int]:
    return [
        int(part.split('"', 2)[1])
        for part in html.split('data-track-type="procedure" data-track-id=')[1:]
    ]


def view(browser, *slugs):
    for slug in slugs:
        assert browser.get(f"/procedures/{slug}").status_code == 200


def test_because_you_viewed_after_two_clicks(catalog, browser):
    view(browser, "botox", "lip-fillers")
    home = browser.get("/").get_data(as_text=True)
    procedures = section(home, "procedures")
    assert "Procedures for you" in procedures
    assert "Because you viewed Injectables treatments" in procedures
    doctors = section(home, "doctors")
    assert "Because you viewed Botox" in doctors or "Because you viewed Lip" in doctors


def test_also_viewed_names_the_procedure_that_led_to_it(catalog):
    botox = catalog_id(catalog, Procedure, "botox")
    peel = catalog_id(catalog, Procedure, "chemical-peel")
    # Enough visitors (MIN_VISITORS) viewed Botox and then a chemical peel.
    for number in range(6):
        crowd = Browser(catalog, address=f"198.51.100.{number}")
        for item in (botox, peel):
            crowd.track(
                {
                    "interaction_type": "click",
                    "target_type": "procedure",
                    "target_id": item,
                }
            )
    visitor = Browser(catalog)
    view(visitor, "botox")
    page = visitor.get("/procedures/botox").get_data(as_text=True)
    similar = section(page, "similar")
    assert procedure_links(similar)[0] == peel
    assert "Because you viewed Botox" in similar


def test_recently_viewed_strip_and_for_you_bring_something_new(catalog, browser):
    assert "Recently viewed" not in browser.get("/").get_data(as_text=True)
    view(browser, "botox", "dysport", "xeomin")
    home = browser.get("/").get_data(as_text=True)
    strip = section(home, "recently-viewed")
    assert strip.index("Xeomin") < strip.index("Dysport") < strip.index("Botox")
    seen = {
        catalog_id(catalog, Procedure, slug) for slug in ("botox", "dysport", "xeomin")
    }
    for_you = procedure_links(section(home, "procedures"))
    assert len(for_you) == 6
    assert not seen & set(for_you)


def test_a_new_visitor_sees_popular_lists_without_reasons(catalog, client):
    home = client.get("/").get_data(as_text=True)
    assert "Popular procedures" in home
    assert "Because you viewed" not in home


def test_reasons_in_words():
    class Named:
        def __init__(self, name, procedures=None):
            self.display_name = name
            if procedures is not None:
                self.procedures = procedures

    botox, injectables, item = Named("Botox"), Named("Injectables", []), Named("X")
    assert explain("also_viewed", botox, item) == "Because you viewed Botox"
    assert explain("affinity", injectables, item) == (
        "Because you viewed Injectables treatments"
    )
    assert explain("affinity", botox, item) == "Because you viewed Botox"
    assert explain("viewed", item, item) == "You viewed this"
    assert explain("popular", None, item) is None
    assert explain("popular_in_city", None, item, "Miami") == "Popular in Miami"


def test_the_api_explains_each_item(catalog, browser):
    view(browser, "botox", "lip-fillers")
    body = browser.get("/personalization/recommendations/doctors").get_json()
    assert body["personalized"] is True
    assert body["items"][0]["why"].startswith("Because you viewed")
    assert not body["items"][0]["name"].startswith("Dr. Dr.")


@pytest.mark.parametrize(
    "query",
    ["top_k=3", "limit=3", "limit=3&top_k=3", "limit=3&top_k=9", "top_k=9&limit=3"],
)
def test_top_k_is_an_alias_of_limit(catalog, client, query):
    body = client.get(f"/personalization/recommendations/procedures?{query}").get_json()
    assert len(body["items"]) == 3


@pytest.mark.parametrize(
    "query, message",
    [
        ("top_k=51", "top_k must be a whole number from 1 to 50"),
        ("top_k=0", "top_k must be"),
        ("top_k=%C2%B2", "top_k must be"),
        ("limit=3&top_k=true", "top_k must be"),
        ("algorithm=magic", "algorithm must be one of hybrid, collaborative"),
        ("algorithm=", "algorithm must be one of"),
        ("item=botox&algorithm=magic", "algorithm must be one of"),
    ],
)
def test_bad_api_parameters_are_refused(catalog, client, query, message):
    answer = client.get(f"/personalization/recommendations/procedures?{query}")
    assert answer.status_code == 400
    assert message in answer.get_json()["error"]


@pytest.mark.parametrize("algorithm", ["hybrid", "collaborative", "content", "popular"])
def test_every_algorithm_answers_a_full_list(catalog, browser, algorithm):
    view(browser, "botox", "lip-fillers")
    for content_type in ("categories", "procedures", "doctors"):
        body = browser.get(
            f"/personalization/recommendations/{content_type}"
            f"?algorithm={algorithm}&top_k=5"
        ).get_json()
        assert len(body["items"]) == 5, (content_type, body)
        assert len({item["id"] for item in body["items"]}) == 5


def test_similar_items_by_algorithm(catalog, client):
    def similar(algorithm):
        body = client.get(
            "/personalization/recommendations/procedures"
            f"?item=botox&algorithm={algorithm}&top_k=5"
        ).get_json()
        return [item["slug"] for item in body["items"]]

    assert len(similar("popular")) == 5
    assert "botox" not in similar("popular")
    assert similar("hybrid") == similar("collaborative")  # no co-visits yet: same fill


def test_algorithms_rank_differently(catalog, browser):
    view(browser, "botox", "lip-fillers")

    def ranked(algorithm):
        body = browser.get(
            f"/personalization/recommendations/procedures?algorithm={algorithm}&top_k=10"
        ).get_json()
        return body["source"], [item["slug"] for item in body["items"]]

    popular_source, popular = ranked("popular")
    content_source, content = ranked("content")
    assert popular_source == "popular"
    assert content_source != "popular"
    assert popular != content
