"""Simulated demo traffic: repeatable, consistent with what the site records, in
both arms of the experiment, and enough for the reports to run on a fresh demo."""

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app import create_app
from demo_traffic import (
    DEFAULT_DAYS,
    DEFAULT_VISITORS,
    REJECTIONS_PER_DAY,
    load_catalog,
    simulate,
)
from helpers import app_config, empty_all_tables
from models import (
    ConsultationRequest,
    ExperimentAssignment,
    ItemPopularity,
    PersonalizeOutbox,
    ProcedureCovisitation,
    RecommendationImpression,
    UserCategoryAffinity,
    UserInteraction,
    VisitorPreference,
    as_utc,
    db,
)
from personalization.events import INTERACTION_TYPES
from personalization.experiment import CONTROL, PERSONALIZED, arm_for
from personalization.identity import VISITOR_ID
from personalization_system import current_system

CONTROL_SHARE = 0.1
TABLES = (
    UserInteraction,
    RecommendationImpression,
    ExperimentAssignment,
    VisitorPreference,
    ConsultationRequest,
    UserCategoryAffinity,
    ItemPopularity,
    ProcedureCovisitation,
)


@pytest.fixture
def app(database_url):
    """The site with the holdout at its default share (the suite's is 0)."""
    app = create_app(app_config(database_url, EXPERIMENT_CONTROL_SHARE=CONTROL_SHARE))
    yield app
    empty_all_tables(app)


@pytest.fixture
def seeded(app, runner):
    """`flask seed-demo` on an empty database: the catalog and the traffic."""
    result = runner.invoke(args=["seed-demo"])
    assert result.exit_code == 0, result.output
    return result.output


def row_counts() -> dict[str, int]:
    return {
        model.__tablename__: db.session.scalar(select(func.count()).select_from(model))
        for model in TABLES
    }


def test_the_simulation_repeats_for_a_seed(catalog):
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    with catalog.app_context():
        demo = load_catalog(db.session)
        first = simulate(demo, now, seed=7, control_share=CONTROL_SHARE)
        assert simulate(demo, now, seed=7, control_share=CONTROL_SHARE) == first
        other = simulate(demo, now, seed=8, control_share=CONTROL_SHARE)
    assert set(other.visitors).isdisjoint(first.visitors)
    assert len(first.visitors) == DEFAULT_VISITORS
    assert all(VISITOR_ID.fullmatch(visitor) for visitor in first.visitors)
    entries = first.interactions
    moments = [e.interaction.occurred_at for e in entries]
    assert moments == sorted(moments)
    assert now - timedelta(days=DEFAULT_DAYS) < moments[0] and moments[-1] < now
    # Some visitors come back on other days, some of them weeks later (so the
    # retention cohorts have something to show).
    first_seen: dict[str, datetime] = {}
    last_seen: dict[str, datetime] = {}
    for entry in entries:
        moment = entry.interaction.occurred_at
        first_seen.setdefault(entry.visitor_id, moment)
        last_seen[entry.visitor_id] = moment
    came_back = [last_seen[v] - first_seen[v] for v in first_seen]
    assert sum(gap > timedelta(days=1) for gap in came_back) > DEFAULT_VISITORS // 4
    assert sum(gap > timedelta(days=14) for gap in came_back) >= 10


@pytest.mark.parametrize("hour", [0, 1, 2, 12, 21, 22, 23])
def test_every_visitor_asked_for_comes_whatever_the_hour(catalog, hour):
    """A first visit drawn in the last two hours before now (left out: its
    pages would end in the future) moves a few hours earlier instead of
    dropping the visitor, so `seed-demo` simulates as many as it says."""
    now = datetime(2026, 11, 30, hour, 30, tzinfo=UTC)
    with catalog.app_context():
        traffic = simulate(load_catalog(db.session), now, control_share=CONTROL_SHARE)
    assert len(traffic.visitors) == DEFAULT_VISITORS
    assert max(e.interaction.occurred_at for e in traffic.interactions) < now


def test_seeded_traffic_is_what_the_site_would_have_recorded(seeded, app):
    assert f"Simulated demo traffic: {DEFAULT_VISITORS} visitors" in seeded
    with app.app_context():
        assignments = dict(
            db.session.execute(
                select(ExperimentAssignment.user_id, ExperimentAssignment.arm)
            ).all()
        )
        assert len(assignments) == DEFAULT_VISITORS
        assert all(arm_for(v, CONTROL_SHARE) == arm for v, arm in assignments.items())
        arms = Counter(assignments.values())
        assert 0.04 < arms[CONTROL] / DEFAULT_VISITORS < 0.18
        logged = set(db.session.scalars(select(UserInteraction.user_id).distinct()))
        assert logged == set(assignments)

        lists = {
            row.id: row for row in db.session.scalars(select(RecommendationImpression))
        }
        for row in lists.values():
            items = json.loads(row.items)
            assert row.item_count == len(items) > 0
            assert row.arm == assignments[row.user_id]
            sources = {source for _, source in items}
            if row.arm == CONTROL and row.list_name.startswith("home:"):
                assert sources == {"fallback"}
        personalized_home = [
            json.loads(row.items)
            for row in lists.values()
            if row.arm == PERSONALIZED and row.list_name == "home:procedure"
        ]
        assert any(
            source == "engine" for items in personalized_home for _, source in items
        )

        # Every recommended click names a list its visitor was shown just
        # before, and the item at that position.
        clicks = db.session.execute(
            select(
                UserInteraction.user_id,
                UserInteraction.target_id,
                UserInteraction.extra_data,
                UserInteraction.timestamp,
            ).where(
                UserInteraction.interaction_type.in_(["click", "not_interested"]),
                UserInteraction.extra_data.like('%"list_id"%'),
            )
        ).all()
        assert len(clicks) > 100
        for visitor, item_id, extra, moment in clicks:
            metadata = json.loads(extra)
            shown = lists[metadata["list_id"]]
            assert shown.user_id == visitor
            assert as_utc(shown.shown_at) <= as_utc(moment)
            assert as_utc(moment) - as_utc(shown.shown_at) < timedelta(minutes=30)
            assert json.loads(shown.items)[metadata["position"] - 1][0] == item_id

        types = Counter(
            dict(
                db.session.execute(
                    select(UserInteraction.interaction_type, func.count()).group_by(
                        UserInteraction.interaction_type
                    )
                ).all()
            )
        )
        assert types["not_interested"] > 0 and types["search"] > 0
        assert (types["engaged"] > 0) == ("engaged" in INTERACTION_TYPES)

        # Consultation requests: a few percent of visitors, each a seeded one,
        # with the form_submit the site records beside it.
        requests = list(db.session.scalars(select(ConsultationRequest)))
        assert 0 < len(requests) < DEFAULT_VISITORS // 10
        submits = Counter(
            db.session.scalars(
                select(UserInteraction.user_id).where(
                    UserInteraction.interaction_type == "form_submit"
                )
            )
        )
        for request in requests:
            assert request.user_id in assignments
            assert request.name.startswith("Demo Visitor ")
            assert request.email.endswith("@example.com")
            assert request.consent_to_contact
            assert request.subject is not None
            assert submits[request.user_id] >= 1

        # The statistics rankings read were derived, past the crowd threshold;
        # nothing made up is queued for Personalize.
        settings = current_system().settings
        crowd = db.session.scalar(
            select(func.count()).where(
                ItemPopularity.target_type == "procedure",
                ItemPopularity.visitors >= settings.min_visitors,
            )
        )
        assert crowd >= 20
        assert db.session.scalar(
            select(func.count()).where(
                ProcedureCovisitation.visitors >= settings.min_visitors
            )
        )
        assert row_counts()["user_category_affinity"] >= DEFAULT_VISITORS
        assert (
            db.session.scalar(select(func.count()).select_from(PersonalizeOutbox)) == 0
        )


def test_a_seeded_visitor_is_a_visitor_like_any_other(seeded, app):
    with app.app_context():
        visitor = db.session.scalar(
            select(ConsultationRequest.user_id).order_by(ConsultationRequest.id)
        )
        system = current_system()
        assert system.visitor_summary(visitor)
        gone = system.forget_visitor(visitor)
        assert sum(gone.values()) > 0
        for model in (UserInteraction, RecommendationImpression, ConsultationRequest):
            assert not db.session.scalar(
                select(func.count()).where(model.user_id == visitor)
            )


def test_seed_demo_twice_adds_no_traffic_and_the_reports_run(seeded, app, runner):
    with app.app_context():
        before = row_counts()
    again = runner.invoke(args=["seed-demo"])
    assert again.exit_code == 0, again.output
    assert "no demo traffic added" in again.output
    with app.app_context():
        assert row_counts() == before

    evaluated = runner.invoke(args=["personalization", "evaluate"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "| strategy |" in evaluated.output
    assert "| blended (served) |" in evaluated.output
    experiment = runner.invoke(args=["personalization", "experiment"])
    assert experiment.exit_code == 0, experiment.output
    rows = {
        line.split()[0]: line.split()
        for line in experiment.output.splitlines()
        if line.split()
    }
    assert int(rows[PERSONALIZED][1]) > int(rows[CONTROL][1]) > 0
    assert "Lift of personalized over control" in experiment.output


def test_no_traffic_seeds_the_catalog_alone(app, runner):
    result = runner.invoke(args=["seed-demo", "--no-traffic"])
    assert result.exit_code == 0, result.output
    assert "Simulated" not in result.output
    with app.app_context():
        assert row_counts()["user_interactions"] == 0
    # A later run adds none either: the catalog was there before it (a real
    # site running seed-demo must never get made-up visitors and leads).
    later = runner.invoke(args=["seed-demo", "--if-empty"])
    assert "not seeding the catalog" in later.output
    assert "no demo traffic added" in later.output
    with app.app_context():
        assert row_counts()["user_interactions"] == 0


def test_the_data_quality_page_has_rejections_to_show(seeded, app):
    from models import RejectedEventCount

    with app.app_context():
        rows = db.session.execute(
            select(RejectedEventCount.source, RejectedEventCount.reason)
        ).all()
    assert rows and {source for source, _ in rows} == {"tracker"}
    assert {reason for _, reason in rows} <= set(REJECTIONS_PER_DAY)
