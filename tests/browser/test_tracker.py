"""The JS tracker in a real browser: one debounced batch, nothing lost on navigation,
nothing sent for visitors who opted out."""

import json

import pytest

from browser_helpers import RECORDED, stay_on_page, tracking_requests, wait_for_rows


def section_ids(page, section: str) -> list[int]:
    links = page.locator(f"#{section} a[data-track-type]")
    return [
        int(links.nth(i).get_attribute("data-track-id")) for i in range(links.count())
    ]


def popular_ids(page, site, content_type: str) -> list[int]:
    """The popular ranking, from the API, for a visitor with no history."""
    answer = page.request.get(
        site.url(f"/personalization/recommendations/{content_type}"),
        headers={"Sec-GPC": "1"},
    )
    assert answer.ok and answer.json()["personalized"] is False
    return [item["id"] for item in answer.json()["items"]]


def test_first_visit_shows_full_popular_sections(site, page, artifacts):
    page.goto(site.url("/"))
    page.screenshot(path=artifacts / "home-before-personalization.png", full_page=True)
    for section, size in (("categories", 6), ("procedures", 6), ("doctors", 6)):
        heading = page.locator(f"#{section}-heading")
        assert heading.inner_text() == f"Popular {section}"
        assert section_ids(page, section) == popular_ids(page, site, section)
        assert len(section_ids(page, section)) == size
    assert page.locator(".privacy-notice").is_visible()


def test_three_clicks_send_one_batch(site, page, artifacts):
    sent = tracking_requests(page)
    page.goto(site.url("/categories/injectables"))
    stay_on_page(page)
    links = page.locator('main a[data-track-type="procedure"]')
    for index in range(3):
        links.nth(index).click()
    links.nth(0).click()  # a quick repeat of the first click counts once
    page.wait_for_timeout(1800)
    assert len(sent) == 1
    events = sent[0].post_data_json["events"]
    assert [e["interaction_type"] for e in events] == ["click"] * 3
    assert len({e["target_id"] for e in events}) == 3
    assert sent[0].headers["x-csrftoken"]
    rows = wait_for_rows(
        site,
        "SELECT target_id FROM user_interactions WHERE interaction_type='click'",
        3,
    )
    assert len(rows) == 3
    scores = site.query("SELECT affinity_score FROM user_category_affinity")
    assert scores and scores[0][0] == pytest.approx(0.1 + 0.9, abs=0.01)

    # After a reload, that category, its procedures and its doctors lead.
    injectables = site.query("SELECT id FROM categories WHERE slug='injectables'")[0][0]
    clicked = {e["target_id"] for e in events}
    page.goto(site.url("/"))
    page.screenshot(path=artifacts / "home-after-personalization.png", full_page=True)
    for section in ("categories", "procedures", "doctors"):
        heading = page.locator(f"#{section}-heading").inner_text()
        assert heading == f"{section.capitalize()} for you"
    first = page.locator("#categories a[data-track-type]").first
    assert int(first.get_attribute("data-track-id")) == injectables
    leading = int(
        page.locator("#procedures a[data-track-type]").first.get_attribute(
            "data-track-id"
        )
    )
    assert site.query("SELECT category_id FROM procedures WHERE id = ?", leading) == [
        (injectables,)
    ]
    doctor = int(
        page.locator("#doctors a[data-track-type]").first.get_attribute("data-track-id")
    )
    performed = site.query(
        "SELECT procedure_id FROM doctor_procedures WHERE doctor_id = ?", doctor
    )
    assert clicked & {pid for (pid,) in performed}


def test_navigating_right_after_a_click_loses_nothing(site, page):
    page.goto(site.base_url + "/")
    link = page.locator('main a[data-track-type="procedure"]').first
    target = int(link.get_attribute("data-track-id"))
    link.click()
    page.wait_for_load_state()
    rows = wait_for_rows(
        site,
        "SELECT target_id FROM user_interactions WHERE interaction_type='click'",
        1,
    )
    assert rows == [(target,)]


def test_search_submit_is_tracked_with_its_query(site, page):
    page.goto(site.base_url + "/")
    page.fill("#site-search", "lip filler")
    page.press("#site-search", "Enter")
    page.wait_for_load_state()
    rows = wait_for_rows(
        site,
        "SELECT extra_data FROM user_interactions WHERE interaction_type='search'",
        1,
    )
    assert len(rows) == 1 and '"query":"lip filler"' in rows[0][0]


def test_global_privacy_control_sends_nothing(site, chromium):
    context = chromium.new_context(extra_http_headers={"Sec-GPC": "1"})
    page = context.new_page()
    sent = tracking_requests(page)
    page.goto(site.base_url + "/categories/injectables")
    page.locator('main a[data-track-type="procedure"]').first.click()
    page.wait_for_load_state()
    page.wait_for_timeout(1500)
    context.close()
    assert sent == []
    assert site.query(RECORDED) == [(0,)]


def test_pages_work_without_javascript(site, chromium):
    context = chromium.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(site.base_url + "/")
    page.fill("#site-search", "botox")
    page.press("#site-search", "Enter")
    page.wait_for_load_state()
    assert "/search?q=botox" in page.url
    page.locator('main a[data-track-type="procedure"]').first.click()
    page.wait_for_load_state()
    assert "/procedures/" in page.url
    context.close()
    # Server-side view logging works without the script.
    assert site.query(RECORDED)[0][0] >= 3


def test_time_on_a_page_is_reported_when_the_visitor_leaves(site, page):
    page.goto(site.url("/procedures/botox"))
    page.wait_for_timeout(2200)
    page.goto(site.url("/privacy"))  # pagehide: the visible time goes with it
    rows = wait_for_rows(
        site,
        "SELECT target_type, target_id, extra_data FROM user_interactions "
        "WHERE interaction_type = 'engaged'",
        1,
    )
    assert len(rows) == 1
    botox = site.query("SELECT id FROM procedures WHERE slug = 'botox'")[0][0]
    target_type, target_id, extra = rows[0]
    assert (target_type, target_id) == ("procedure", botox)
    seconds = json.loads(extra)["seconds"]
    assert 2 <= seconds <= 10
