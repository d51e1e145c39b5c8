"""Search in a real browser: typed into the header box, as a visitor would."""

import pytest

BOTOX_DOCTORS_IN = """
    SELECT count(*) FROM doctors d
    JOIN doctor_procedures dp ON dp.doctor_id = d.id
    JOIN procedures p ON p.id = dp.procedure_id
    WHERE p.slug = 'botox' AND d.city = ?
"""


def search_from_the_header(page, site, query: str) -> None:
    page.goto(site.url("/"))
    box = page.get_by_role("searchbox", name="Search procedures and doctors")
    box.click()
    box.press_sequentially(query)
    with page.expect_navigation():
        box.press("Enter")


def test_a_misspelled_search_finds_its_procedure_first(site, page, artifacts):
    search_from_the_header(page, site, "rhinoplsty")
    assert "/search?q=rhinoplsty" in page.url
    first = page.locator("section#procedures h3 a").first
    assert first.inner_text() == "Rhinoplasty"
    notice = page.locator("#corrected")
    assert "Showing results for rhinoplasty" in " ".join(notice.inner_text().split())
    # The box keeps what was typed; the original stays one click away.
    assert page.locator("#site-search").input_value() == "rhinoplsty"
    page.screenshot(path=artifacts / "search-corrected.png", full_page=True)
    with page.expect_navigation():
        notice.get_by_role("link", name="rhinoplsty").click()
    assert "0 results" in page.locator("main").inner_text()
    page.get_by_role("link", name="Rhinoplasty").first.click()
    page.wait_for_url("**/search?q=Rhinoplasty")
    assert page.locator("section#procedures h3 a").first.inner_text() == "Rhinoplasty"


@pytest.mark.parametrize(
    ("query", "city"), [("botox miami", "Miami"), ("nyc botox", "New York")]
)
def test_botox_and_a_city_lists_only_that_citys_doctors(site, page, query, city):
    search_from_the_header(page, site, query)
    heading = page.locator("section#doctors h2").inner_text()
    assert heading == f"Doctors in {city} who perform Botox"
    cards = page.locator("section#doctors li.card")
    [(expected,)] = site.query(BOTOX_DOCTORS_IN, city)
    assert expected and cards.count() == min(expected, 20)
    for meta in cards.locator(".meta").all_inner_texts():
        assert meta.endswith(f"· {city}"), meta
