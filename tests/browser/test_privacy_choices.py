"""Privacy choices as a visitor makes them in a real browser: opting out, consent in
opt-in mode, and "forget me"."""

from browser_helpers import RECORDED, stay_on_page, tracking_requests, wait_for_rows


def click_three_procedures(page, site, category="injectables"):
    page.goto(site.url(f"/categories/{category}"))
    stay_on_page(page)
    links = page.locator('main a[data-track-type="procedure"]')
    for index in range(3):
        links.nth(index).click()


def assert_home_is_popular(page, site):
    page.goto(site.url("/"))
    for section in ("categories", "procedures", "doctors"):
        assert page.locator(f"#{section}-heading").inner_text().startswith("Popular")


def test_opt_out_cookie_sends_nothing_and_shows_popular_content(site, page):
    page.goto(site.url("/privacy"))
    page.get_by_role("button", name="Turn personalization off").click()
    page.wait_for_load_state()
    assert "off" in page.locator("main").inner_text().lower()
    cookies = {cookie["name"]: cookie for cookie in page.context.cookies()}
    assert cookies["antidote_tracking"]["value"] == "off"
    site.clear_history()

    sent = tracking_requests(page)
    click_three_procedures(page, site)
    page.wait_for_timeout(1500)
    assert sent == []
    assert page.locator("script[data-endpoint]").count() == 0
    assert_home_is_popular(page, site)
    assert site.query(RECORDED) == [(0,)]


def test_global_privacy_control_shows_popular_content(site, chromium):
    context = chromium.new_context(extra_http_headers={"Sec-GPC": "1"})
    page = context.new_page()
    sent = tracking_requests(page)
    click_three_procedures(page, site)
    page.wait_for_timeout(1500)
    assert_home_is_popular(page, site)
    context.close()
    assert sent == []
    assert site.query(RECORDED) == [(0,)]


def test_opt_in_mode_tracks_only_after_accepting(opt_in_site, page):
    site = opt_in_site
    sent = tracking_requests(page)
    page.goto(site.url("/"))
    banner = page.locator(".consent-banner")
    assert banner.is_visible()
    click_three_procedures(page, site)
    page.wait_for_timeout(1500)
    assert sent == []
    assert site.query(RECORDED) == [(0,)]

    page.goto(site.url("/"))
    page.get_by_role("button", name="Accept").click()
    page.wait_for_load_state()
    assert page.locator(".consent-banner").count() == 0
    click_three_procedures(page, site)
    page.wait_for_timeout(1800)
    assert len(sent) == 1
    clicks = wait_for_rows(
        site, "SELECT id FROM user_interactions WHERE interaction_type='click'", 3
    )
    assert len(clicks) == 3


def test_opt_in_mode_declining_keeps_nothing(opt_in_site, page):
    site = opt_in_site
    page.goto(site.url("/procedures/botox"))
    page.get_by_role("button", name="Decline").click()
    page.wait_for_load_state()
    assert page.locator(".consent-banner").count() == 0
    sent = tracking_requests(page)
    click_three_procedures(page, site)
    page.wait_for_timeout(1500)
    assert sent == []
    assert site.query(RECORDED) == [(0,)]


def test_forget_me_empties_the_history(site, page):
    click_three_procedures(page, site)
    wait_for_rows(
        site, "SELECT id FROM user_interactions WHERE interaction_type='click'", 3
    )
    page.goto(site.url("/"))
    assert page.locator("#categories-heading").inner_text() == "Categories for you"
    [(visitor,)] = site.query("SELECT DISTINCT user_id FROM user_interactions")

    page.goto(site.url("/privacy"))
    page.get_by_role("link", name="Forget me").click()  # asks first
    page.get_by_role("button", name="Yes, delete everything").click()
    page.wait_for_load_state()
    assert "Deleted" in page.locator("main").inner_text()
    assert site.query(
        "SELECT count(*) FROM user_interactions WHERE user_id = ?", visitor
    ) == [(0,)]
    assert site.query(
        "SELECT count(*) FROM user_category_affinity WHERE user_id = ?", visitor
    ) == [(0,)]
    page.goto(site.url("/"))
    assert page.locator("#categories-heading").inner_text() == "Popular categories"
