"""The A/B holdout: stable, stored assignment; control sees popular lists; the
arm goes with every impression; untracked visitors are never in it; and the
report's interval maths on numbers worked out by hand."""

import json
import math
import random
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app import create_app
from helpers import Browser, app_config
from models import (
    ConsultationRequest,
    ExperimentAssignment,
    RecommendationImpression,
    UserInteraction,
    db,
    utcnow,
)
from personalization.experiment import CONTROL, PERSONALIZED, arm_for, bucket
from personalization.intervals import (
    BOOTSTRAP_MAX_VISITORS,
    bootstrap_lift,
    delta_lift,
    lift_interval,
    mean_interval,
    sample_ratio_check,
    wilson_interval,
)

# Interval maths on known numbers


def test_wilson_interval_matches_the_textbook_values():
    # Newcombe (1998), and any statistics package: 8 of 10 -> [0.490, 0.943].
    estimate = wilson_interval(8, 10)
    assert estimate.value == 0.8
    assert estimate.low == pytest.approx(0.4902, abs=1e-4)
    assert estimate.high == pytest.approx(0.9433, abs=1e-4)
    # No successes still gives an upper bound (the normal interval gives [0, 0]).
    none = wilson_interval(0, 10)
    assert none.low == 0.0 and none.high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0).value is None


def test_mean_interval_is_the_normal_interval_of_the_mean():
    estimate = mean_interval([0, 0, 1, 1])
    # mean 0.5, sample sd 0.57735, se 0.288675 -> 0.5 +- 0.5658
    assert estimate.value == 0.5
    assert estimate.high == pytest.approx(0.5 + 1.959964 * 0.288675, abs=1e-5)
    assert estimate.low == 0.0  # a count per visitor is never negative


def test_sample_ratio_mismatch_is_flagged_only_when_the_split_is_off():
    shares = {CONTROL: 0.1, PERSONALIZED: 0.9}
    fine = sample_ratio_check({CONTROL: 100, PERSONALIZED: 900}, shares)
    assert fine.chi_square == 0 and fine.p_value == 1 and not fine.mismatch
    # (150-100)^2/100 + (850-900)^2/900 = 25 + 2.78 = 27.78; p = 1.36e-7
    off = sample_ratio_check({CONTROL: 150, PERSONALIZED: 850}, shares)
    assert off.chi_square == pytest.approx(27.7778, abs=1e-4)
    assert off.p_value == pytest.approx(math.erfc(math.sqrt(27.7778 / 2)), rel=1e-3)
    assert off.mismatch
    assert not sample_ratio_check({CONTROL: 110, PERSONALIZED: 890}, shares).mismatch
    # Visitors in an arm that should hold none: the split is broken.
    empty = sample_ratio_check({CONTROL: 3, PERSONALIZED: 90}, {CONTROL: 0.0})
    assert empty.mismatch and empty.p_value == 0


def test_bootstrap_lift_is_seeded_and_centred_on_the_point_estimate():
    # Every treated visitor clicks 2 of 10, every control visitor 1 of 10.
    treated = [(2, 10)] * 50
    control = [(1, 10)] * 50
    lift = bootstrap_lift(treated, control)
    assert lift.value == pytest.approx(1.0)
    assert lift.low == pytest.approx(1.0) and lift.high == pytest.approx(1.0)
    # Varied visitors: the interval covers the point and repeats exactly.
    treated = [(v % 3, 10) for v in range(60)]
    control = [(v % 2, 10) for v in range(60)]
    first, second = bootstrap_lift(treated, control), bootstrap_lift(treated, control)
    assert first == second
    assert first.low < first.value < first.high
    assert first.value == pytest.approx((60 / 600) / (30 / 600) - 1)
    assert bootstrap_lift(treated, [(0, 10)] * 5).value is None  # no baseline


def synthetic_arm(rng, visitors: int, rate: float) -> list[tuple[int, int]]:
    """(clicks, items shown) per visitor; visitors differ in how much they click."""
    units = []
    for _ in range(visitors):
        shown = rng.randint(5, 40)
        leaning = rng.random() * 2 * rate
        units.append((sum(rng.random() < leaning for _ in range(shown)), shown))
    return units


def test_the_delta_method_agrees_with_the_bootstrap_on_a_large_sample():
    rng = random.Random(7)
    treated, control = synthetic_arm(rng, 3000, 0.07), synthetic_arm(rng, 3000, 0.05)
    boot = bootstrap_lift(treated, control, resamples=1000)
    delta = delta_lift(treated, control)
    assert delta.value == pytest.approx(boot.value)
    assert delta.low == pytest.approx(boot.low, abs=0.01)
    assert delta.high == pytest.approx(boot.high, abs=0.01)
    # Past BOOTSTRAP_MAX_VISITORS a report takes the delta method (milliseconds).
    many = treated * 2
    assert len(many) > BOOTSTRAP_MAX_VISITORS
    assert lift_interval(many, control) == delta_lift(many, control)
    assert lift_interval(treated[:50], control[:50]) == bootstrap_lift(
        treated[:50], control[:50]
    )


# Assignment


def test_assignment_is_a_stable_hash_with_the_configured_share():
    ids = [f"{n:032x}" for n in range(20_000)]
    in_control = sum(arm_for(v, 0.1) == CONTROL for v in ids)
    assert 0.09 < in_control / len(ids) < 0.11
    assert [arm_for(v, 0.1) for v in ids[:50]] == [arm_for(v, 0.1) for v in ids[:50]]
    # Raising the share only moves visitors into control.
    assert all(arm_for(v, 0.2) == CONTROL for v in ids if arm_for(v, 0.1) == CONTROL)
    assert 0 <= bucket(ids[0]) < 1


def holdout_app(database_url, share=0.5):
    app = create_app(app_config(database_url, EXPERIMENT_CONTROL_SHARE=share))
    return app


def browser_in(app, arm: str) -> Browser:
    """A new visitor who landed in `arm` (ids are random: try until one does)."""
    for number in range(60):
        browser = Browser(app, address=f"198.51.100.{number}")
        browser.get("/procedures")
        if stored_arm(app, browser) == arm:
            return browser
    raise AssertionError(f"no visitor landed in {arm}")


def stored_arm(app, browser) -> str | None:
    from visitor import cookie_serializer

    raw = browser.cookie("antidote_visitor")
    with app.test_request_context():
        visitor = cookie_serializer().loads(raw)
    with app.app_context():
        return db.session.scalar(
            select(ExperimentAssignment.arm).where(
                ExperimentAssignment.user_id == visitor
            )
        )


def impressions(app) -> list[RecommendationImpression]:
    with app.app_context():
        rows = db.session.scalars(select(RecommendationImpression)).all()
        db.session.expunge_all()
        return rows


def test_the_arm_is_stored_once_and_kept_when_the_share_changes(database_url, catalog):
    app = holdout_app(database_url)
    browser = browser_in(app, CONTROL)
    # Another worker, configured with no holdout at all: the stored arm wins.
    other = create_app(app_config(database_url, EXPERIMENT_CONTROL_SHARE=0.0))
    tab = browser.new_tab(other)
    tab.client.delete_cookie("session")  # no cached arm: the database answers
    tab.get("/")
    assert stored_arm(other, tab) == CONTROL
    assert {row.arm for row in impressions(other)} == {CONTROL}
    with app.app_context():
        assert db.session.scalar(select(func.count(ExperimentAssignment.user_id))) >= 1


def test_control_sees_popular_lists_and_personalized_sees_its_own(
    database_url, catalog
):
    app = holdout_app(database_url)
    for arm in (CONTROL, PERSONALIZED):
        browser = browser_in(app, arm)
        browser.get("/procedures/botox")
        browser.get("/procedures/lip-fillers")
        html = browser.get("/").get_data(as_text=True)
        home = [
            r
            for r in impressions(app)
            if r.list_name == "home:procedure" and r.arm == arm
        ][-1]
        sources = {source for _, source in json.loads(home.items)}
        if arm == CONTROL:
            assert sources == {"fallback"}
            assert "Recently viewed" not in html
        else:
            assert "engine" in sources
            assert "Recently viewed" in html
        assert home.item_count == len(json.loads(home.items))


def test_the_api_follows_the_arm_unless_an_algorithm_is_asked_for(
    database_url, catalog
):
    app = holdout_app(database_url)
    browser = browser_in(app, CONTROL)
    browser.get("/procedures/botox")
    answer = browser.get("/personalization/recommendations/procedures").get_json()
    assert answer["source"] == "popular"
    asked = browser.get(
        "/personalization/recommendations/procedures?algorithm=hybrid"
    ).get_json()
    assert asked["source"] != "popular"
    # The one the arm chose counts for it; the one the client chose, for none.
    assert sorted(
        str(r.arm) for r in impressions(app) if r.list_name.startswith("api:")
    ) == ["None", CONTROL]


def test_visitors_who_are_not_tracked_are_never_assigned(database_url, catalog):
    app = holdout_app(database_url)
    for headers in ({"Sec-GPC": "1"}, {"DNT": "1"}):
        private = Browser(app, headers=headers)
        private.get("/")
        private.get("/procedures/botox")
    with app.app_context():
        assert db.session.scalar(select(func.count(ExperimentAssignment.user_id))) == 0
    assert impressions(app) == []


def test_download_shows_the_arm_and_forget_removes_it(database_url, catalog):
    app = holdout_app(database_url)
    browser = browser_in(app, PERSONALIZED)
    data = json.loads(browser.get("/privacy/download").get_data())
    assert [row["arm"] for row in data["experiment_arms"]] == [PERSONALIZED]
    cookie = browser.cookie("antidote_visitor")
    browser.post("/personalization/forget")
    browser.client.set_cookie("antidote_visitor", cookie)  # to ask about it again
    assert stored_arm(app, browser) is None
    with browser.client.session_transaction() as session:
        assert "arm" not in session  # it named the erased visitor


def test_lists_an_api_client_chose_the_algorithm_of_count_for_no_arm(
    database_url, catalog
):
    app = holdout_app(database_url)
    browser = browser_in(app, PERSONALIZED)
    browser.get("/personalization/recommendations/procedures?algorithm=popular")
    browser.get("/personalization/recommendations/doctors")
    arms = {r.list_name: r.arm for r in impressions(app)}
    assert arms == {"api:procedures": None, "api:doctors": PERSONALIZED}


def test_a_malformed_card_reference_is_refused_at_the_door(catalog, browser):
    for metadata in ({"list_id": ["x"]}, {"list_id": "zz"}, {"position": 0}):
        event = {
            "interaction_type": "click",
            "target_type": "page",
            "metadata": {"list_id": "0123456789abcdef", "position": 1, **metadata},
        }
        assert browser.track(event).status_code == 400, metadata


# The report


def seed_experiment(app, days_ago=2):
    """Four visitors per arm, with numbers worked out by hand:
    personalized: 40 items shown, 6 cards clicked (one twice, counted once),
    one forged click; 2 visitors asked for a consultation (3 requests);
    control: 40 items shown, 2 clicked, 1 request."""
    then = utcnow() - timedelta(days=days_ago)
    plan = {
        PERSONALIZED: [(2, 1), (2, 2), (1, 0), (1, 0)],  # (clicks, requests)
        CONTROL: [(1, 1), (1, 0), (0, 0), (0, 0)],
    }
    with app.app_context():
        for arm, visitors in plan.items():
            for n, (clicks, requests) in enumerate(visitors):
                visitor = f"{arm[:4]}{n}".ljust(32, "0")
                db.session.add(
                    ExperimentAssignment(
                        experiment="personalization-holdout",
                        user_id=visitor,
                        arm=arm,
                        assigned_at=then,
                    )
                )
                list_id = f"{arm[:4]}{n}".ljust(16, "a")
                db.session.add(
                    RecommendationImpression(
                        id=list_id,
                        user_id=visitor,
                        request_id="r",
                        list_name="home:procedure",
                        item_kind="procedure",
                        items=json.dumps([[i, "engine"] for i in range(1, 11)]),
                        item_count=10,
                        arm=arm,
                        shown_at=then,
                    )
                )
                for position in range(1, clicks + 1):
                    for _ in range(2 if position == 1 else 1):  # a double click
                        db.session.add(click(visitor, list_id, position, then))
                for r in range(requests):
                    db.session.add(
                        ConsultationRequest(
                            reference=f"{visitor[:6]}{r}",
                            user_id=visitor,
                            name="Maya",
                            email="maya@example.com",
                            message="",
                            consent_to_contact=True,
                            created_at=then,
                        )
                    )
        # A click naming someone else's list counts for nobody, nor one naming a
        # position past the end of its list.
        db.session.add(click("pers3".ljust(32, "0"), "cont0".ljust(16, "a"), 1, then))
        db.session.add(click("pers3".ljust(32, "0"), "pers3".ljust(16, "a"), 39, then))
        db.session.commit()


def click(visitor, list_id, position, when) -> UserInteraction:
    return UserInteraction(
        user_id=visitor,
        session_id="s",
        interaction_type="click",
        target_type="procedure",
        target_id=position,
        extra_data=json.dumps({"list_id": list_id, "position": position}),
        timestamp=when,
    )


def test_the_experiment_report_counts_visitors_clicks_and_requests(
    database_url, catalog
):
    app = holdout_app(database_url, share=0.5)
    seed_experiment(app)
    result = app.test_cli_runner().invoke(
        args=["personalization", "experiment", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    treated, held_out = report["arms"][PERSONALIZED], report["arms"][CONTROL]
    assert (treated["visitors"], treated["shown"], treated["clicked"]) == (4, 40, 6)
    assert (held_out["visitors"], held_out["shown"], held_out["clicked"]) == (4, 40, 2)
    assert treated["click_through"]["value"] == pytest.approx(0.15)
    assert treated["click_through"]["low"] == pytest.approx(wilson_interval(6, 40).low)
    assert treated["consultations"] == 3 and held_out["consultations"] == 1
    assert treated["converted"]["value"] == 0.5
    assert report["click_through_lift"]["value"] == pytest.approx(2.0)
    assert report["consultation_lift"]["value"] == pytest.approx(2.0)
    assert report["sample_ratio"]["mismatch"] is False

    table = app.test_cli_runner().invoke(args=["personalization", "experiment"])
    assert table.exit_code == 0, table.output
    assert "15.00% [" in table.output and "Sample ratio" in table.output
    # Visitors assigned before the window are not counted.
    old = app.test_cli_runner().invoke(
        args=["personalization", "experiment", "--days", "1"]
    )
    assert "No visitor was assigned" in old.output


def test_the_split_is_judged_by_the_share_each_visitor_was_assigned_under(
    database_url, catalog
):
    app = holdout_app(database_url, share=0.5)
    seed_experiment(app)  # 4 and 4: as a 50% share expects
    with app.app_context():
        db.session.execute(
            ExperimentAssignment.__table__.update().values(control_share=0.5)
        )
        db.session.commit()
    # The share is now 10%: the visitors assigned under 50% still match theirs.
    later = create_app(app_config(database_url, EXPERIMENT_CONTROL_SHARE=0.1))
    result = later.test_cli_runner().invoke(
        args=["personalization", "experiment", "--json"]
    )
    report = json.loads(result.output)
    assert report["sample_ratio"]["chi_square"] == 0
    assert report["sample_ratio"]["mismatch"] is False
    assert report["control_share"] == 0.1
