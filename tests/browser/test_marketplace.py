"""A visitor acting on what the site shows, in a real browser: a consultation
request from a doctor page on a phone, and "because you viewed" after two clicks."""

from browser_helpers import wait_for_rows

PHONE = {"width": 375, "height": 667}


def test_consultation_request_from_a_doctor_page_on_a_phone(site, chromium, artifacts):
    context = chromium.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    [(slug, name)] = site.query(
        "SELECT slug, name FROM doctors WHERE credentials = 'MD' ORDER BY id LIMIT 1"
    )
    page.goto(site.url(f"/doctors/{slug}"))
    # The call to action is on the first screen; the form is one tap away.
    button = page.get_by_role("link", name="Request a consultation")
    assert button.bounding_box()["y"] < PHONE["height"]
    button.tap()
    form = page.locator("form.consultation-form")
    form.get_by_label("Your name").fill("Maya Rivera")
    form.locator("#email").fill("maya@example")  # a typo the server catches
    form.locator("#consent").check()
    with page.expect_navigation():
        form.get_by_role("button", name="Send request").tap()
    error = page.locator("#email-error")
    assert "Enter an email address like" in error.inner_text()
    assert page.locator("#name").input_value() == "Maya Rivera"  # nothing retyped
    assert site.query("SELECT count(*) FROM consultation_requests") == [(0,)]
    page.screenshot(path=artifacts / "consultation-error-phone.png", full_page=True)

    page.locator("#email").fill("maya@example.com")
    page.locator("#consent").check()
    with page.expect_navigation():
        page.get_by_role("button", name="Send request").tap()
    assert page.locator("h1").inner_text() == "Your request was sent"
    assert f"Dr. {name}" in page.locator("main").inner_text()
    reference = page.locator(".reference").inner_text()
    rows = wait_for_rows(
        site, "SELECT reference, name, email FROM consultation_requests", 1
    )
    assert rows == [(reference, "Maya Rivera", "maya@example.com")]
    page.screenshot(path=artifacts / "consultation-sent-phone.png", full_page=True)
    # The page fits the phone: nothing scrolls sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    context.close()


def test_because_you_viewed_after_two_clicks(site, chromium, artifacts):
    context = chromium.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    for name in ("Botox", "Lip Fillers"):
        page.goto(site.url("/categories/injectables"))
        link = page.locator('main a[data-track-type="procedure"]', has_text=name).first
        with page.expect_navigation():
            link.tap()
    wait_for_rows(
        site, "SELECT 1 FROM user_interactions WHERE target_id IS NOT NULL", 4
    )
    page.goto(site.url("/"))
    heading = page.locator("#procedures-heading")
    assert heading.inner_text() == "Procedures for you"
    # The personalized section starts on the first screen of a phone.
    assert heading.bounding_box()["y"] < PHONE["height"]
    reasons = page.locator("#procedures .why, #doctors .why").all_inner_texts()
    assert any(reason.startswith("Because you viewed") for reason in reasons)
    strip = page.locator("#recently-viewed").inner_text()
    assert strip.index("Lip Fillers") < strip.index("Botox")
    page.screenshot(path=artifacts / "because-you-viewed-phone.png", full_page=True)
    context.close()
