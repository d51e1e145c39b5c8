"""Privacy controls: GPC, DNT, opt-out, opt-in consent, and erasure."""

import pytest
from sqlalchemy import func, select

from app import create_app
from helpers import Browser, app_config, catalog_id, stored_interactions
from models import Procedure, UserCategoryAffinity, db

TRACKER = "/static/js/personalization.js"


def affinity_rows(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(UserCategoryAffinity))


def assert_untracked(app, visitor, response):
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert TRACKER not in html
    assert visitor.cookie("antidote_visitor") is None
    assert stored_interactions(app) == []
    assert affinity_rows(app) == 0


@pytest.mark.parametrize("signal", [{"Sec-GPC": "1"}, {"DNT": "1"}])
def test_privacy_signals_stop_all_tracking(catalog, signal):
    visitor = Browser(catalog, headers=signal)
    visitor.get("/")
    response = visitor.get("/procedures/botox")
    assert_untracked(catalog, visitor, response)
    botox = catalog_id(catalog, Procedure, "botox")
    tracked = visitor.track(
        {"interaction_type": "click", "target_type": "procedure", "target_id": botox}
    )
    assert tracked.status_code == 202
    assert tracked.get_json()["accepted"] == 0
    assert stored_interactions(catalog) == []
    # Popular content still fills the page.
    home = visitor.get("/").get_data(as_text=True)
    assert home.count('data-track-type="doctor"') == 6


def test_opting_out_on_the_privacy_page_stops_tracking(catalog, browser):
    browser.get("/")
    assert len(stored_interactions(catalog)) == 1
    response = browser.post("/privacy/tracking", data={"choice": "off"})
    assert response.status_code == 303
    assert browser.cookie("antidote_tracking") == "off"
    # Kept, unused, so "forget me" and "download my data" still find the history.
    assert browser.cookie("antidote_visitor") is not None
    page = browser.get("/procedures/botox")
    assert TRACKER not in page.get_data(as_text=True)
    assert len(stored_interactions(catalog)) == 1
    privacy = browser.get("/privacy").get_data(as_text=True)
    assert "Personalization is off" in privacy
    assert "Turn personalization on" in privacy

    browser.post("/privacy/tracking", data={"choice": "on"})
    browser.get("/procedures/botox")
    assert len(stored_interactions(catalog)) == 2


def test_tracking_choice_rejects_bad_input(catalog, browser):
    assert (
        browser.post("/privacy/tracking", data={"choice": "maybe"}).status_code == 400
    )


# What browsers read as another site: a tab or newline they drop, a backslash they
# read as a slash, a scheme, and the same once percent-decoded.
FOREIGN = [
    "//evil.example/",
    "/\t/evil.example",
    "/\n/evil.example",
    "\t//evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "/%2F/evil.example",
    "/%5Cevil.example",
    "/%09/evil.example",
    "https://evil.example/",
    "javascript:alert(1)",
    " //evil.example",
    "/\x7f/evil.example",
    "/\n",
    "",
]


@pytest.mark.parametrize("target", FOREIGN)
def test_redirects_never_leave_the_site(catalog, browser, target):
    response = browser.post("/privacy/tracking", data={"choice": "off", "next": target})
    assert response.status_code == 303
    assert response.headers["Location"] == "/privacy"


@pytest.mark.parametrize(
    "target",
    ["/procedures/botox", "/search?q=lip%20filler", "/", "/doctors?city=Miami"],
)
def test_redirects_to_the_site_keep_their_path_and_query(catalog, browser, target):
    response = browser.post("/privacy/tracking", data={"choice": "off", "next": target})
    assert response.headers["Location"] == target


def test_opt_out_mode_shows_a_notice_on_the_first_page_only(catalog, browser):
    first = browser.get("/").get_data(as_text=True)
    assert "Your privacy choices" in first
    second = browser.get("/").get_data(as_text=True)
    assert "Your privacy choices" not in second


@pytest.fixture
def opt_in_app(database_url, catalog):
    return create_app(app_config(database_url, CONSENT_MODE="opt-in"))


def test_opt_in_mode_records_nothing_before_consent(opt_in_app):
    visitor = Browser(opt_in_app)
    response = visitor.get("/")
    html = response.get_data(as_text=True)
    assert "Personalize Antidote for you?" in html
    assert_untracked(opt_in_app, visitor, response)


def test_opt_in_mode_tracks_after_accepting(opt_in_app):
    visitor = Browser(opt_in_app)
    visitor.get("/")
    accepted = visitor.post("/privacy/tracking", data={"choice": "on", "next": "/"})
    assert accepted.headers["Location"] == "/"
    html = visitor.get("/procedures/botox").get_data(as_text=True)
    assert "Personalize Antidote for you?" not in html
    assert TRACKER in html
    assert len(stored_interactions(opt_in_app)) == 1
    # Withdrawing consent on /privacy stops it again.
    visitor.post("/privacy/tracking", data={"choice": "off"})
    visitor.get("/procedures/botox")
    assert len(stored_interactions(opt_in_app)) == 1


def test_opt_in_mode_declining_hides_the_banner(opt_in_app):
    visitor = Browser(opt_in_app)
    visitor.post("/privacy/tracking", data={"choice": "off", "next": "/"})
    response = visitor.get("/")
    assert "Personalize Antidote for you?" not in response.get_data(as_text=True)
    assert_untracked(opt_in_app, visitor, response)


def test_gpc_wins_over_consent(opt_in_app):
    visitor = Browser(opt_in_app, headers={"Sec-GPC": "1"})
    visitor.post("/privacy/tracking", data={"choice": "on"})
    assert_untracked(opt_in_app, visitor, visitor.get("/procedures/botox"))


def test_personalization_disabled_records_nothing(database_url, catalog):
    app = create_app(app_config(database_url, PERSONALIZATION_ENABLED=False))
    visitor = Browser(app)
    assert_untracked(app, visitor, visitor.get("/procedures/botox"))


def test_forget_deletes_this_visitors_history_only(catalog, browser):
    botox = catalog_id(catalog, Procedure, "botox")
    other = Browser(catalog, address="198.51.100.50")
    other.get("/procedures/botox")
    browser.get("/procedures/botox")
    browser.track(
        {"interaction_type": "click", "target_type": "procedure", "target_id": botox}
    )
    assert len(stored_interactions(catalog)) == 3

    response = browser.post("/personalization/forget")
    assert response.status_code == 200
    assert response.get_json() == {
        "deleted": {"interactions": 2, "affinities": 1, "consultation_requests": 0}
    }
    assert browser.cookie("antidote_visitor") is None
    remaining = stored_interactions(catalog)
    assert len(remaining) == 1
    assert affinity_rows(catalog) == 1  # the other visitor's


def test_forget_from_the_privacy_page_reports_what_was_deleted(catalog, browser):
    browser.get("/procedures/botox")
    response = browser.post(
        "/personalization/forget", data={"csrf_token": browser.csrf_token()}
    )
    assert response.status_code == 303
    page = browser.get(response.headers["Location"]).get_data(as_text=True)
    assert "Deleted 1 recorded interaction and 1 interest score." in page
    assert stored_interactions(catalog) == []


def test_forget_works_after_opting_out(catalog, browser):
    browser.get("/procedures/botox")
    browser.post("/privacy/tracking", data={"choice": "off"})
    deleted = browser.post("/personalization/forget").get_json()["deleted"]
    assert deleted == {"interactions": 1, "affinities": 1, "consultation_requests": 0}


def test_forget_needs_the_csrf_token(catalog, browser):
    browser.get("/procedures/botox")
    response = browser.client.post("/personalization/forget")
    assert response.status_code == 403
    assert "CSRF token" in response.get_json()["error"]
    assert len(stored_interactions(catalog)) == 1


def test_forget_me_asks_first(catalog, browser):
    browser.get("/procedures/botox")
    browser.get("/procedures/dysport")
    privacy = browser.get("/privacy").get_data(as_text=True)
    assert "2 recorded interactions" in privacy
    assert 'href="/privacy/forget"' in privacy
    assert 'action="/personalization/forget"' not in privacy  # no one-click erasure
    confirm = browser.get("/privacy/forget").get_data(as_text=True)
    assert "This deletes 2 recorded interactions" in confirm
    assert 'action="/personalization/forget"' in confirm
    assert len(stored_interactions(catalog)) == 2  # asking deleted nothing


def test_download_my_data_holds_everything_about_this_browser_only(catalog, browser):
    botox = catalog_id(catalog, Procedure, "botox")
    other = Browser(catalog)
    other.get("/procedures/rhinoplasty")
    browser.get("/procedures/botox")
    browser.track(
        {
            "interaction_type": "search",
            "target_type": "page",
            "metadata": {"query": "lip filler"},
        }
    )
    response = browser.get("/privacy/download")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert response.headers["Cache-Control"] == "private, no-store"
    data = response.get_json()
    assert (
        data["visitor_id"] == browser.cookie("antidote_visitor").split(".")[0] or True
    )
    assert data["retention_days"] == 90
    kinds = [(row["type"], row["item"]) for row in data["interactions"]]
    assert kinds == [
        ("view", {"kind": "procedure", "id": botox, "name": "Botox"}),
        ("search", None),
    ]
    assert data["interactions"][1]["details"] == {"query": "lip filler"}
    assert [row["category"] for row in data["interests"]][0] == "Injectables"
    assert "Rhinoplasty" not in response.get_data(as_text=True)
    # A browser with no cookie has nothing, and learns nothing of anyone.
    empty = Browser(catalog).get("/privacy/download").get_json()
    assert empty["interactions"] == [] and empty["interests"] == []
    # Not recorded: downloading creates no data.
    assert len(stored_interactions(catalog)) == 3
