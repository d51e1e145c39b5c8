"""The /admin dashboard: `flask admin create`, the login (hashing, CSRF, rate
limits, session), private pages, and each page's figures on known data."""

import json
import re
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from werkzeug.security import check_password_hash

from app import create_app
from helpers import app_config
from models import (
    AdminUser,
    Category,
    ConsultationRequest,
    Doctor,
    ExperimentAssignment,
    Package,
    PersonalizeOutbox,
    Procedure,
    RecommendationImpression,
    RejectedEventCount,
    UserInteraction,
    WebhookEventKey,
    db,
)
from personalization.dashboard import PAGES
from personalization.experiment import EXPERIMENT

PASSWORD = "correct horse battery"
PAGE_PATHS = [
    "/admin/",
    "/admin/recommendations",
    "/admin/experiment",
    "/admin/regions",
    "/admin/quality",
    "/admin/journeys",
    "/admin/cohorts",
]
CSRF_FIELD = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
LOGOUT_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def create_admin(runner, username="ada", password=PASSWORD, confirm=None):
    return runner.invoke(
        args=["admin", "create", "--username", username],
        input=f"{password}\n{confirm or password}\n",
    )


def new_address() -> str:
    """A fresh client address: rate-limit counts never leak between tests."""
    return f"198.51.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"


class AdminBrowser:
    """A test client at one address that signs in through the form."""

    def __init__(self, app, address=None):
        self.client = app.test_client()
        self.address = address or new_address()

    def get(self, path, **kwargs):
        return self.client.get(
            path, environ_base={"REMOTE_ADDR": self.address}, **kwargs
        )

    def post(self, path, data, **kwargs):
        return self.client.post(
            path, data=data, environ_base={"REMOTE_ADDR": self.address}, **kwargs
        )

    def login(self, username="ada", password=PASSWORD, next_path=""):
        page = self.get("/admin/login").get_data(as_text=True)
        token = CSRF_FIELD.search(page).group(1)
        return self.post(
            "/admin/login",
            {
                "csrf_token": token,
                "username": username,
                "password": password,
                "next": next_path,
            },
        )


@pytest.fixture
def admin_app(app, runner):
    assert create_admin(runner).exit_code == 0
    return app


@pytest.fixture
def signed_in(admin_app):
    browser = AdminBrowser(admin_app)
    assert browser.login().status_code == 302
    return browser


# `flask admin create`


def test_create_stores_a_salted_hash(app, runner):
    result = create_admin(runner)
    assert result.exit_code == 0, result.output
    assert "created" in result.output
    assert PASSWORD not in result.output
    with app.app_context():
        user = db.session.scalar(select(AdminUser))
        assert user.username == "ada"
        assert user.password_hash != PASSWORD
        assert check_password_hash(user.password_hash, PASSWORD)


def test_create_prompts_for_the_username(app, runner):
    result = runner.invoke(
        args=["admin", "create"], input=f"grace\n{PASSWORD}\n{PASSWORD}\n"
    )
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert db.session.scalar(select(AdminUser.username)) == "grace"


def test_create_refuses_a_taken_username_whatever_its_case(app, runner):
    assert create_admin(runner).exit_code == 0
    result = create_admin(runner, username="ADA")
    assert result.exit_code != 0
    assert "already exists" in result.output
    with app.app_context():
        assert len(db.session.scalars(select(AdminUser)).all()) == 1


def test_create_refuses_a_short_password(app, runner):
    result = create_admin(runner, password="short-11ch")
    assert result.exit_code != 0
    assert "at least 12 characters" in result.output
    with app.app_context():
        assert db.session.scalar(select(AdminUser)) is None


def test_create_asks_again_when_the_confirmation_differs(app, runner):
    result = runner.invoke(
        args=["admin", "create", "--username", "ada"],
        input=f"{PASSWORD}\nsomething else!!\n{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output


# Signing in


@pytest.mark.parametrize("path", PAGE_PATHS)
def test_every_page_needs_a_login(admin_app, path):
    answer = AdminBrowser(admin_app).get(path)
    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/admin/login?next=")


def test_login_leads_back_to_the_page_asked_for(admin_app):
    browser = AdminBrowser(admin_app)
    first = browser.get("/admin/cohorts?days=7")
    target = first.headers["Location"].split("next=", 1)[1]
    answer = browser.login(next_path="/admin/cohorts?days=7")
    assert "cohorts" in target
    assert answer.headers["Location"] == "/admin/cohorts?days=7"
    assert browser.get("/admin/cohorts?days=7").status_code == 200


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/"])
def test_login_never_leads_off_the_dashboard(admin_app, target):
    answer = AdminBrowser(admin_app).login(next_path=target)
    assert answer.headers["Location"] == "/admin/"


@pytest.mark.parametrize("username", ["ada", "nobody"])
def test_a_wrong_login_says_the_same_whoever_it_names(admin_app, username):
    browser = AdminBrowser(admin_app)
    answer = browser.login(username=username, password="wrong password!!")
    assert answer.status_code == 200
    assert "do not match an admin" in answer.get_data(as_text=True)
    assert browser.get("/admin/").status_code == 302


def test_login_records_when_and_rotates_the_session(admin_app):
    browser = AdminBrowser(admin_app)
    browser.get("/admin/login")
    with browser.client.session_transaction() as session:
        session["planted"] = "by someone else"
    assert browser.login().status_code == 302
    with browser.client.session_transaction() as session:
        assert "planted" not in session
        assert session["admin_id"]
    with admin_app.app_context():
        assert db.session.scalar(select(AdminUser.last_login_at)) is not None


def test_logout_needs_a_post_and_ends_the_session(signed_in):
    page = signed_in.get("/admin/").get_data(as_text=True)
    assert signed_in.get("/admin/logout").status_code == 405
    token = LOGOUT_CSRF.search(page).group(1)
    answer = signed_in.post("/admin/logout", {"csrf_token": token})
    assert answer.status_code == 302
    assert signed_in.get("/admin/").status_code == 302


def test_logout_without_the_csrf_token_is_refused(signed_in):
    assert signed_in.post("/admin/logout", {}).status_code == 403
    assert signed_in.get("/admin/").status_code == 200


def test_login_needs_the_csrf_token(app, database_url):
    app = create_app(app_config(database_url, WTF_CSRF_ENABLED=True))
    assert create_admin(app.test_cli_runner()).exit_code == 0
    answer = app.test_client().post(
        "/admin/login", data={"username": "ada", "password": PASSWORD}
    )
    assert answer.status_code == 403
    assert "session" not in (answer.headers.get("Set-Cookie") or "admin_id")


def test_failed_logins_are_rate_limited_per_address(admin_app):
    attacker = AdminBrowser(admin_app)
    statuses = [
        attacker.login(password=f"guess number {n}").status_code for n in range(6)
    ]
    assert statuses == [200] * 5 + [429]
    # Even the right password waits now, from that address...
    assert attacker.login().status_code == 429
    # ...but the admin, elsewhere, still gets in.
    assert AdminBrowser(admin_app).login().status_code == 302


def test_failed_logins_are_rate_limited_per_username(app, database_url):
    """(`app`: its teardown empties the tables this test's own app fills.)"""
    app = create_app(
        app_config(database_url, ADMIN_LOGIN_RATE_LIMIT_PER_USERNAME="3 per hour")
    )
    assert create_admin(app.test_cli_runner()).exit_code == 0
    network = f"198.51.{secrets.randbelow(250)}"
    for n in range(3):  # three addresses of one network, one guess each
        guesser = AdminBrowser(app, f"{network}.{n + 1}")
        assert guesser.login(password=f"guess {n} abcdef").status_code == 200
    assert AdminBrowser(app, f"{network}.9").login().status_code == 429
    # Another username is not held by it, nor the admin from another network.
    assert AdminBrowser(app, f"{network}.10").login(username="grace").status_code == 200
    assert AdminBrowser(app, "192.0.2.1").login().status_code == 302


def test_successful_logins_do_not_count(admin_app):
    address = new_address()
    for _ in range(7):
        assert AdminBrowser(admin_app, address).login().status_code == 302


# The pages


def test_pages_are_private_and_not_indexed(signed_in):
    for path in [*PAGE_PATHS, "/admin/login"]:
        answer = signed_in.get(path)
        assert answer.status_code in (200, 302), path
        assert "no-store" in answer.headers["Cache-Control"]
        assert "noindex" in answer.headers["X-Robots-Tag"]


def test_public_pages_do_not_link_to_the_dashboard(catalog):
    for path in ["/", "/procedures", "/privacy"]:
        assert "/admin" not in catalog.test_client().get(path).get_data(as_text=True)


@pytest.mark.parametrize("days", ["abc", "0", "14", "-7", "30.0", ""])
def test_a_window_that_is_not_offered_is_refused(signed_in, days):
    assert signed_in.get(f"/admin/?days={days}").status_code == 400


@pytest.mark.parametrize("path", PAGE_PATHS)
def test_every_page_renders_on_an_empty_database(signed_in, path):
    for days in (7, 30, 90):
        answer = signed_in.get(f"{path}?days={days}")
        assert answer.status_code == 200, path
        assert "No data yet" in answer.get_data(as_text=True), path


def test_the_facade_knows_every_page(admin_app):
    from personalization_system import current_system

    with admin_app.app_context():
        for name in PAGES:
            assert isinstance(current_system().dashboard_page(name, 30), dict)
        with pytest.raises(ValueError):
            current_system().dashboard_page("secrets", 30)


# Known data: two visitors, one per arm


NOW = datetime.now(UTC)
# Times count back from the last noon, so that what happened "about a day ago"
# (0.95 to 1.2 days) falls on one calendar day whatever the hour the suite runs:
# returning visitors are counted by day. (From NOW, after midnight, Alice's and
# Bob's visits spread over two days and made them returning.)
LAST_NOON = NOW.replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(
    days=int(NOW.hour < 12)
)


def at(days_ago: float) -> datetime:
    return LAST_NOON - timedelta(days=days_ago)


def click(user, list_id, position, when, session="s1"):
    return UserInteraction(
        user_id=user,
        session_id=session,
        interaction_type="click",
        target_type="procedure",
        target_id=1,
        extra_data=json.dumps({"list_id": list_id, "position": position}),
        timestamp=when,
    )


def view(user, when, kind="page", target=None, path="/", session="s1"):
    return UserInteraction(
        user_id=user,
        session_id=session,
        interaction_type="view",
        target_type=kind,
        target_id=target,
        extra_data='{"path":"/"}' if kind == "page" and path == "/" else None,
        timestamp=when,
    )


@pytest.fixture
def traffic(catalog, admin_app):
    """Alice (personalized) saw two lists, clicked two cards and one forged one,
    dismissed one, and asked for a consultation; Bob (control) saw one list and
    clicked once; Carol came back a week after her first visit."""
    with catalog.app_context():
        procedures = db.session.scalars(select(Procedure.id).limit(4)).all()
        p1, p2, p3, p4 = procedures
        db.session.add_all(
            [
                ExperimentAssignment(
                    experiment=EXPERIMENT,
                    user_id="alice",
                    arm="personalized",
                    assigned_at=at(2),
                ),
                ExperimentAssignment(
                    experiment=EXPERIMENT,
                    user_id="bob",
                    arm="control",
                    assigned_at=at(2),
                ),
                RecommendationImpression(
                    id="a" * 16,
                    user_id="alice",
                    request_id="r1",
                    list_name="home:procedure",
                    item_kind="procedure",
                    items=json.dumps(
                        [[p1, "engine"], [p2, "engine"], [p3, "fallback"]]
                    ),
                    item_count=3,
                    arm="personalized",
                    shown_at=at(1),
                ),
                RecommendationImpression(
                    id="b" * 16,
                    user_id="alice",
                    request_id="r2",
                    list_name="procedure:similar",
                    item_kind="procedure",
                    items=json.dumps([[p1, "engine"], [p4, "engine"]]),
                    item_count=2,
                    arm="personalized",
                    shown_at=at(1),
                ),
                RecommendationImpression(
                    id="c" * 16,
                    user_id="bob",
                    request_id="r3",
                    list_name="home:procedure",
                    item_kind="procedure",
                    items=json.dumps([[p1, "fallback"], [p2, "fallback"]]),
                    item_count=2,
                    arm="control",
                    shown_at=at(1),
                ),
                view("alice", at(1.1)),
                view("alice", at(1.05), kind="procedure", target=p1),
                click("alice", "a" * 16, 1, at(1)),
                click("alice", "a" * 16, 1, at(0.99)),  # the same card again
                click("alice", "b" * 16, 2, at(0.98)),
                click("alice", "c" * 16, 1, at(0.97)),  # Bob's list: forged
                UserInteraction(
                    user_id="alice",
                    session_id="s1",
                    interaction_type="not_interested",
                    target_type="procedure",
                    target_id=p3,
                    timestamp=at(0.96),
                ),
                UserInteraction(
                    user_id="alice",
                    session_id="s1",
                    interaction_type="form_submit",
                    target_type="procedure",
                    target_id=p4,
                    extra_data='{"form":"consultation"}',
                    timestamp=at(0.95),
                ),
                view("bob", at(1.2)),
                click("bob", "c" * 16, 2, at(1), session="s2"),
                view("carol", at(20), session="s3"),
                view("carol", at(12), session="s4"),
                UserInteraction(
                    user_id="alice",
                    session_id="s1",
                    interaction_type="engaged",
                    target_type="procedure",
                    target_id=p1,
                    extra_data='{"seconds":30,"path":"/procedures/x"}',
                    timestamp=at(1),
                ),
                UserInteraction(
                    user_id="bob",
                    session_id="s2",
                    interaction_type="engaged",
                    target_type="procedure",
                    target_id=p2,
                    extra_data='{"seconds":10,"path":"/procedures/y"}',
                    timestamp=at(1),
                ),
                UserInteraction(
                    user_id="bob",
                    session_id="s2",
                    interaction_type="engaged",
                    target_type="page",
                    extra_data='{"seconds":5,"path":"/"}',
                    timestamp=at(1),
                ),
                ConsultationRequest(
                    reference="REF123",
                    user_id="alice",
                    procedure_id=p4,
                    name="Alice",
                    email="alice@example.com",
                    consent_to_contact=True,
                    created_at=at(0.95),
                ),
                RejectedEventCount(
                    day=NOW.date(), source="tracker", reason="unknown_item", count=4
                ),
                RejectedEventCount(
                    day=NOW.date() - timedelta(days=1),
                    source="amplitude",
                    reason="bad_time",
                    count=2,
                ),
                WebhookEventKey(key_hash="k1", received_at=at(0.5)),
                WebhookEventKey(key_hash="k2", received_at=at(0.5)),
                *(
                    PersonalizeOutbox(
                        user_id="alice",
                        session_id="s1",
                        event_type="click",
                        item_id="procedure:1",
                        event_value=0.3,
                        occurred_at=at(1),
                        attempts=attempts,
                        sent_at=sent,
                    )
                    for attempts, sent in ((0, None), (2, None), (10, None), (0, at(1)))
                ),
            ]
        )
        db.session.commit()
    return catalog


def page_data(app, name, days=30):
    from personalization_system import current_system

    with app.app_context():
        return current_system().dashboard_page(name, days)


def by_name(rows, key="name"):
    return {row[key]: row for row in rows}


def test_recommendation_figures(traffic):
    data = page_data(traffic, "recommendations")
    assert data["shown"] == 7
    assert data["lists"] == 3
    # Alice: a:1 (twice, one card) and b:2; her click on Bob's list is forged.
    # Bob: c:2.
    assert data["clicked"] == 3
    assert data["click_through"] == pytest.approx(3 / 7)
    arms = by_name(data["by_arm"])
    assert arms["personalized"]["shown"] == 5
    assert arms["personalized"]["clicked"] == 2
    assert arms["personalized"]["click_through"] == pytest.approx(2 / 5)
    assert arms["control"]["click_through"] == pytest.approx(1 / 2)
    assert arms["personalized"]["low"] < 0.4 < arms["personalized"]["high"]
    assert arms["personalized"]["dismissed"] == 1
    assert arms["personalized"]["dismiss_rate"] == pytest.approx(1 / 5)
    assert data["dismiss_rate"] == pytest.approx(1 / 7)
    sources = by_name(data["by_source"])
    assert sources["engine"]["shown"] == 4
    assert sources["engine"]["clicked"] == 2
    assert sources["fallback"]["shown"] == 3
    assert sources["fallback"]["clicked"] == 1
    sections = by_name(data["by_section"])
    assert sections["home:procedure"]["shown"] == 5
    assert sections["home:procedure"]["lists"] == 2
    assert sections["home:procedure"]["clicked"] == 2
    assert sections["procedure:similar"]["clicked"] == 1
    positions = by_name(data["by_position"])
    assert positions[1]["shown"] == 3
    assert positions[1]["clicked"] == 1
    assert positions[2]["shown"] == 3
    assert positions[2]["clicked"] == 2
    assert positions[3]["shown"] == 1
    coverage = by_name(data["coverage"], "kind")
    with traffic.app_context():
        procedures = db.session.query(Procedure).count()
        doctors = db.session.query(Doctor).count()
        assert coverage["category"]["catalog"] == db.session.query(Category).count()
        assert coverage["package"]["catalog"] == db.session.query(Package).count()
    assert coverage["procedure"]["shown"] == 4
    assert coverage["procedure"]["share"] == pytest.approx(4 / procedures)
    assert coverage["doctor"]["shown"] == 0
    assert coverage["doctor"]["catalog"] == doctors


def test_overview_figures(traffic):
    data = page_data(traffic, "overview")
    assert data["events_by_type"]["click"] == 5
    assert data["events_by_type"]["view"] == 5
    assert data["visitors_total"] == 3
    assert data["requests_total"] == 1
    # Carol's second visit (12 days ago) is a return; nobody else came back on
    # a later day (alice's and bob's first visits are within the window).
    assert data["returning_total"] == 1
    assert sum(data["returning"]) == 1
    assert len(data["days"]) == 30
    assert data["days"][-1] == NOW.date().isoformat()
    assert len(data["visitors"]) == 30
    names = [name for name, _ in data["events_series"]]
    assert "click" in names and "view" in names
    assert page_data(traffic, "overview", 7)["visitors_total"] == 2


def test_experiment_figures(traffic):
    data = page_data(traffic, "experiment")
    assert data["arms"]["personalized"]["visitors"] == 1
    assert data["arms"]["personalized"]["clicked"] == 2
    assert data["arms"]["control"]["consultations"] == 0
    assert data["arms"]["personalized"]["consultations"] == 1


def test_quality_figures(traffic):
    data = page_data(traffic, "quality")
    assert data["rejected_total"] == 6
    assert data["rejected_reasons"][0] == {
        "source": "tracker",
        "reason": "unknown_item",
        "count": 4,
    }
    assert data["rejected"][-1] == 4 and data["rejected"][-2] == 2
    assert data["webhooks_total"] == 2
    assert data["outbox"]["pending"] == 2
    assert data["outbox"]["refused"] == 1
    assert data["outbox"]["oldest_pending"]


def test_journey_figures(traffic):
    data = page_data(traffic, "journeys")
    funnel = by_name(data["funnel"], "arm")
    # Alice: home, then a procedure page, then a request. Bob: home only.
    assert funnel["personalized"]["counts"] == [1, 1, 1]
    assert funnel["control"]["counts"] == [1, 0, 0]
    assert funnel["control"]["rates"] == [1.0, 0.0, 0.0]
    paths = {tuple(p["steps"]): p["visits"] for p in data["paths"]["top"]}
    assert paths == {
        ("home:procedure", "procedure:similar", "consultation request"): 1,
        ("home:procedure",): 1,
    }
    assert data["paths"]["converted"] == 1
    engaged = by_name(data["engaged"], "kind")
    assert engaged["procedure"]["pages"] == 2
    assert engaged["procedure"]["seconds"] == 40
    assert engaged["procedure"]["median"] == 20
    assert engaged["home"]["seconds"] == 5


def test_cohort_figures(traffic):
    data = page_data(traffic, "cohorts")
    cohorts = {c["week_of"]: c for c in data["cohorts"]}
    first = at(20).date()
    carol = cohorts[(first - timedelta(days=first.weekday())).isoformat()]
    # Carol: back 8 days after her first visit: week 1.
    assert carol["visitors"] >= 1
    week1 = carol["cells"][0]
    assert week1["returned"] == 1
    assert week1["share"] == pytest.approx(1 / carol["visitors"])
    assert sum(c["visitors"] for c in data["cohorts"]) == 3
    latest = data["cohorts"][-1]
    assert not latest["cells"][0]["complete"]


def test_regions_lists_the_cities_visitors_chose(traffic, signed_in):
    from models import VisitorPreference

    with traffic.app_context():
        db.session.add(VisitorPreference(user_id="alice", city="Miami"))
        db.session.commit()
    data = page_data(traffic, "regions")
    assert [c["city"] for c in data["cities"]] == ["Miami"]
    assert data["cities"][0]["sample"] == 1
    assert data["cities"][0]["procedures"][0]["rate"] == 1.0
    html = signed_in.get("/admin/regions").get_data(as_text=True)
    assert "Miami" in html and "<svg" in html


@pytest.mark.parametrize("path", PAGE_PATHS)
def test_every_page_shows_its_charts_with_data(traffic, signed_in, path):
    answer = signed_in.get(path)
    html = answer.get_data(as_text=True)
    assert answer.status_code == 200
    if path != "/admin/regions":
        assert '<svg class="chart-svg"' in html, path
        assert 'role="img"' in html and "<title" in html
        assert "Show the data" in html
    assert "style=" not in html  # the Content-Security-Policy forbids it


def test_recommendation_page_shows_the_numbers(traffic, signed_in):
    html = signed_in.get("/admin/recommendations").get_data(as_text=True)
    assert "42.9%" in html  # 3 clicks / 7 shown
    assert "40.0%" in html  # personalized: 2 / 5
    assert "50.0%" in html  # control: 1 / 2


def test_labels_are_escaped(traffic, signed_in):
    with traffic.app_context():
        db.session.add(
            RejectedEventCount(
                day=NOW.date(), source="tracker", reason="<script>x</script>", count=1
            )
        )
        db.session.commit()
    html = signed_in.get("/admin/quality").get_data(as_text=True)
    assert "<script>x" not in html
    assert "&lt;script&gt;x" in html
