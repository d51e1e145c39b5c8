"""Every main page in a real browser: it works with JavaScript off, and axe-core
finds no serious accessibility violation on it."""

import pytest

from browser_helpers import RECORDED

# axe-core's impact levels; "serious" and "critical" block people from using a page.
BLOCKING_IMPACTS = {"serious", "critical"}


def main_pages(site) -> list[str]:
    [(doctor,)] = site.query("SELECT slug FROM doctors ORDER BY id LIMIT 1")
    [(package,)] = site.query("SELECT slug FROM packages ORDER BY id LIMIT 1")
    [(city,)] = site.query("SELECT city FROM doctors ORDER BY id LIMIT 1")
    return [
        "/",
        "/categories",
        "/categories/injectables",
        "/procedures",
        "/procedures/botox",
        "/doctors",
        f"/doctors?city={city}",
        f"/doctors/{doctor}",
        f"/packages/{package}",
        "/search?q=filler",
        "/search?q=nothing-matches-this",
        "/privacy",
        "/no-such-page",
    ]


@pytest.fixture
def no_js_page(chromium):
    context = chromium.new_context(java_script_enabled=False)
    yield context.new_page()
    context.close()


def test_every_page_works_without_javascript(site, no_js_page):
    page = no_js_page
    for path in main_pages(site):
        answer = page.goto(site.url(path))
        expected = 404 if path == "/no-such-page" else 200
        assert answer.status == expected, path
        assert page.locator("main h1").first.is_visible(), path
        assert page.locator("header nav a").count() >= 4, path
    # Following the navigation works too.
    page.goto(site.url("/"))
    for name in ("Categories", "Procedures", "Doctors", "Privacy"):
        page.locator("header nav").get_by_role("link", name=name).click()
        page.wait_for_load_state()
        assert page.locator("main h1").first.is_visible(), name


def test_privacy_forms_work_without_javascript(site, no_js_page):
    page = no_js_page
    page.goto(site.url("/procedures/botox"))
    assert site.query(RECORDED)[0][0] == 1
    page.goto(site.url("/privacy"))
    page.get_by_role("link", name="Forget me").click()
    page.wait_for_load_state()
    assert "This deletes 1 recorded interaction" in page.locator("main").inner_text()
    page.get_by_role("button", name="Yes, delete everything").click()
    page.wait_for_load_state()
    assert "Deleted 1 recorded interaction and" in page.locator("main").inner_text()
    assert site.query(RECORDED) == [(0,)]
    page.get_by_role("button", name="Turn personalization off").click()
    page.wait_for_load_state()
    page.goto(site.url("/procedures/botox"))
    assert site.query(RECORDED) == [(0,)]


def test_consent_banner_works_without_javascript(opt_in_site, no_js_page):
    page = no_js_page
    page.goto(opt_in_site.url("/procedures/botox"))
    page.get_by_role("button", name="Accept").click()
    page.wait_for_load_state()
    assert page.url.endswith("/procedures/botox")
    assert page.locator(".consent-banner").count() == 0
    page.goto(opt_in_site.url("/procedures/rhinoplasty"))
    assert opt_in_site.query(RECORDED)[0][0] >= 1


def blocking_violations(page) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    assert results.response["testEngine"]["name"] == "axe-core"  # it really ran
    return [
        f"{violation['id']} ({violation['impact']}): {violation['help']} "
        f"at {[node['target'] for node in violation['nodes']][:3]}"
        for violation in results.response["violations"]
        if violation["impact"] in BLOCKING_IMPACTS
    ]


def test_main_pages_have_no_serious_accessibility_violations(site, page):
    found = {}
    for path in main_pages(site):
        page.goto(site.url(path))
        violations = blocking_violations(page)
        if violations:
            found[path] = violations
    assert found == {}


def test_consent_banner_has_no_serious_accessibility_violations(opt_in_site, page):
    page.goto(opt_in_site.url("/"))
    assert page.locator(".consent-banner").is_visible()
    assert blocking_violations(page) == []
