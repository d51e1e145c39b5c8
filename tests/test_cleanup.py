"""`flask personalization cleanup`: retention of interactions and faded affinities."""

from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select

from app import create_app
from helpers import app_config, catalog_id
from models import Category, UserCategoryAffinity, UserInteraction, db, utcnow


def add_interactions(app, ages_in_days: list[float]) -> None:
    now = utcnow()
    with app.app_context():
        db.session.execute(
            insert(UserInteraction),
            [
                {
                    "user_id": f"visitor{i}",
                    "session_id": "s",
                    "interaction_type": "view",
                    "target_type": "page",
                    "timestamp": now - timedelta(days=age),
                }
                for i, age in enumerate(ages_in_days)
            ],
        )
        db.session.commit()


def add_affinity(app, user_id: str, score: float, age_in_days: float) -> None:
    category = catalog_id(app, Category, "injectables")
    with app.app_context():
        db.session.add(
            UserCategoryAffinity(
                user_id=user_id,
                category_id=category,
                affinity_score=score,
                last_updated=utcnow() - timedelta(days=age_in_days),
            )
        )
        db.session.commit()


def interaction_ages(app) -> list[int]:
    now = utcnow()
    with app.app_context():
        stamps = db.session.scalars(select(UserInteraction.timestamp)).all()
    return sorted(
        round((now - (s if s.tzinfo else s.replace(tzinfo=now.tzinfo))).days)
        for s in stamps
    )


def affinity_users(app) -> set[str]:
    with app.app_context():
        return set(db.session.scalars(select(UserCategoryAffinity.user_id)))


@pytest.fixture
def history(catalog):
    add_interactions(catalog, [1, 30, 89, 91, 120, 400, 400])
    add_affinity(catalog, "fresh", 0.5, 10)  # 0.5 * 0.95^10 = 0.30: kept
    add_affinity(catalog, "faded", 0.5, 100)  # 0.5 * 0.95^100 = 0.003: deleted
    add_affinity(catalog, "strong-old", 1.0, 80)  # 1.0 * 0.95^80 = 0.0165: kept
    return catalog


def test_dry_run_counts_and_deletes_nothing(history, runner):
    result = runner.invoke(args=["personalization", "cleanup", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "Would delete 4 interactions older than 90 days, 1 affinities" in (
        result.output
    )
    assert len(interaction_ages(history)) == 7
    assert affinity_users(history) == {"fresh", "faded", "strong-old"}


def test_cleanup_deletes_only_what_is_past_the_cutoff(history, runner):
    result = runner.invoke(args=["personalization", "cleanup", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "Deleted 4 interactions older than 90 days, 1 affinities" in result.output
    assert interaction_ages(history) == [1, 30, 89]
    assert affinity_users(history) == {"fresh", "strong-old"}
    again = runner.invoke(args=["personalization", "cleanup"])
    assert "Deleted 0 interactions" in again.output


def test_days_option_overrides_the_retention_setting(history, runner):
    result = runner.invoke(args=["personalization", "cleanup", "--days", "20"])
    assert result.exit_code == 0
    assert interaction_ages(history) == [1]


def test_retention_setting_is_the_default(database_url, history):
    app = create_app(app_config(database_url, INTERACTION_RETENTION_DAYS=365))
    result = app.test_cli_runner().invoke(args=["personalization", "cleanup"])
    assert "older than 365 days" in result.output
    assert interaction_ages(app) == [1, 30, 89, 91, 120]


def test_deletes_in_batches_each_committed(history):
    with history.app_context():
        system = history.extensions["personalization"]
        old = system.retention_tasks(90, utcnow())[0]
        assert old.label == "interactions" and system.count(old) == 4
        batches = []
        for deleted in system.delete_in_batches(old, batch_size=3):
            batches.append(deleted)
            # Each batch is committed before the next: another session sees it.
            with db.engine.connect() as other:
                remaining = other.execute(
                    select(func.count()).select_from(UserInteraction)
                ).scalar()
            assert remaining == 7 - sum(batches)
        assert batches == [3, 1]


def test_bad_options_and_failures_exit_non_zero(history, runner, tmp_path):
    result = runner.invoke(args=["personalization", "cleanup", "--days", "0"])
    assert result.exit_code != 0
    assert "--days" in result.output
    unmigrated = create_app(app_config(f"sqlite:///{tmp_path}/empty.db"))
    result = unmigrated.test_cli_runner().invoke(args=["personalization", "cleanup"])
    assert result.exit_code == 1
    assert "cleanup failed" in result.output


# Every table with visitor data, on one schedule


def add_everything_once(app, age_in_days: float) -> None:
    """One row of every table holding visitor data, `age_in_days` old (a
    consultation request 60 days more: it has its own, longer, period)."""
    from models import (
        ConsultationRequest,
        ErasedVisitor,
        ExperimentAssignment,
        PersonalizeOutbox,
        RecommendationImpression,
        VisitorPreference,
        WebhookEventKey,
    )

    then = utcnow() - timedelta(days=age_in_days)
    tag = f"{age_in_days:g}"
    category = catalog_id(app, Category, "injectables")
    with app.app_context():
        db.session.add(
            UserInteraction(
                user_id=f"v{tag}",
                session_id="s",
                interaction_type="view",
                target_type="page",
                timestamp=then,
            )
        )
        # Full strength: it has not faded, only nothing has fed it for that long.
        db.session.add(
            UserCategoryAffinity(
                user_id=f"v{tag}",
                category_id=category,
                affinity_score=1.0,
                last_updated=then,
            )
        )
        for state, sent_at, attempts in (
            ("sent", then, 0),
            ("waiting", None, 0),
            ("refused", None, 10),
        ):
            db.session.add(
                PersonalizeOutbox(
                    user_id=f"v{tag}",
                    session_id=state,
                    event_type="view",
                    item_id="procedure:1",
                    event_value=0.1,
                    occurred_at=then,
                    sent_at=sent_at,
                    attempts=attempts,
                )
            )
        db.session.add(
            WebhookEventKey(key_hash=f"k{tag}".ljust(64, "0"), received_at=then)
        )
        db.session.add(
            RecommendationImpression(
                id=f"list{tag}",
                user_id=f"v{tag}",
                request_id="r",
                list_name="home:procedure",
                item_kind="procedure",
                items='[[1,"engine"]]',
                item_count=1,
                shown_at=then,
            )
        )
        db.session.add(
            ExperimentAssignment(
                experiment="holdout", user_id=f"v{tag}", arm="control", assigned_at=then
            )
        )
        db.session.add(
            VisitorPreference(user_id=f"v{tag}", city="Miami", updated_at=then)
        )
        db.session.add(ErasedVisitor(user_id=f"e{tag}", erased_at=then))
        db.session.add(
            ConsultationRequest(
                reference=f"R{tag}",
                user_id=f"v{tag}",
                name="Maya",
                email="maya@example.com",
                message="",
                consent_to_contact=True,
                created_at=then - timedelta(days=60),
            )
        )
        db.session.commit()


def rows_by_table(app) -> dict[str, int]:
    with app.app_context():
        return {
            table.name: db.session.scalar(select(func.count()).select_from(table))
            for table in VISITOR_DATA_TABLES
        }


def visitor_data_tables():
    """Tables holding a visitor id or derived from one (webhook event keys)."""
    from models import WebhookEventKey

    tables = [t for t in db.metadata.sorted_tables if "user_id" in t.c]
    return tables + [WebhookEventKey.__table__]


VISITOR_DATA_TABLES = visitor_data_tables()


def test_every_table_with_visitor_data_has_a_retention_task(catalog):
    """A table added later with a visitor column fails here until cleanup covers
    it."""
    with catalog.app_context():
        tasks = catalog.extensions["personalization"].retention_tasks(90, utcnow())
    covered = {task.model.__table__.name for task in tasks}
    assert {table.name for table in VISITOR_DATA_TABLES} <= covered


def test_cleanup_empties_every_table_of_what_is_past_retention(database_url, catalog):
    # Interest that barely fades: only its age can remove it.
    app = create_app(app_config(database_url, AFFINITY_DECAY_RATE=0.999))
    add_everything_once(app, 121)  # past the 90 days (and requests' 180)
    add_everything_once(app, 3)  # within them (and within 7 days for keys)
    assert set(rows_by_table(app).values()) >= {2, 6}
    result = app.test_cli_runner().invoke(args=["personalization", "cleanup"])
    assert result.exit_code == 0, result.output
    assert rows_by_table(app) == {
        "user_interactions": 1,
        "pending_interactions": 0,  # aggregated as they came
        "user_category_affinity": 1,
        "personalize_outbox": 3,  # the 3-day-old rows, whatever their state
        "webhook_event_keys": 1,
        "visitor_preferences": 1,
        "consultation_requests": 1,
        "recommendation_impressions": 1,
        "experiment_assignments": 1,
        "erased_visitors": 0,  # kept a day, not the period
    }


def test_an_erasure_note_is_kept_a_day(catalog, runner):
    from models import ErasedVisitor

    with catalog.app_context():
        for hours in (23, 25):
            then = utcnow() - timedelta(hours=hours)
            db.session.add(ErasedVisitor(user_id=f"e{hours}", erased_at=then))
        db.session.commit()
    result = runner.invoke(args=["personalization", "cleanup"])
    assert result.exit_code == 0, result.output
    with catalog.app_context():
        assert db.session.scalars(select(ErasedVisitor.user_id)).all() == ["e23"]


def test_a_forget_me_not_yet_sent_to_personalize_outlives_the_period(catalog, runner):
    from models import PersonalizeOutbox
    from personalization.outbox import DELETE_USER

    old = utcnow() - timedelta(days=400)
    with catalog.app_context():
        for sent_at in (None, old):
            db.session.add(
                PersonalizeOutbox(
                    user_id="v" * 32,
                    session_id="forget",
                    event_type=DELETE_USER,
                    item_id="",
                    event_value=0.0,
                    occurred_at=old,
                    sent_at=sent_at,
                )
            )
        db.session.commit()
    result = runner.invoke(args=["personalization", "cleanup"])
    assert result.exit_code == 0, result.output
    with catalog.app_context():
        left = db.session.scalars(select(PersonalizeOutbox.sent_at)).all()
    assert left == [None]  # the delivered one went; the pending one waits


def test_what_a_request_stored_after_its_visitors_erasure_goes(catalog, runner):
    """A request in flight during "forget me" commits after it: a bare page
    view, a city choice, an arm of the experiment, a list shown (inline, with
    no aggregator to drop it). The cleanup deletes what carries an erased id,
    before the note naming it, and nothing of anyone else."""
    from models import (
        ErasedVisitor,
        ExperimentAssignment,
        PersonalizeOutbox,
        RecommendationImpression,
        VisitorPreference,
    )
    from personalization.events import Interaction
    from personalization.outbox import DELETE_USER

    system = catalog.extensions["personalization"]
    forgotten, other = "f" * 32, "a" * 32
    tables = (
        UserInteraction,
        VisitorPreference,
        ExperimentAssignment,
        RecommendationImpression,
    )
    with catalog.app_context():
        system.forget_visitor(forgotten)
        for visitor in (forgotten, other):  # the request in flight, and another
            system.record_interactions(visitor, "s", [Interaction("view", None)])
            system.choose_city(visitor, "Miami")
            system.experiment_arm(visitor)
            home = system.home_sections(visitor, {"procedure": 3})
            system.record_page(
                visitor,
                "s",
                None,
                ("r" * 32, {"home:procedure": home.by_kind["procedure"]}, None),
            )
        # An event queued for Personalize goes; the erasure's own request that
        # Personalize delete the visitor stays.
        for event_type, item in (("view", "procedure:1"), (DELETE_USER, "")):
            db.session.add(
                PersonalizeOutbox(
                    user_id=forgotten,
                    session_id="s",
                    event_type=event_type,
                    item_id=item,
                    event_value=0.0,
                    occurred_at=utcnow(),
                )
            )
        db.session.commit()
        for model in tables:
            assert db.session.scalar(
                select(func.count()).where(model.user_id == forgotten)
            ), model

    result = runner.invoke(args=["personalization", "cleanup"])
    assert result.exit_code == 0, result.output
    assert "and 5 rows stored after their visitor's erasure" in result.output
    with catalog.app_context():
        for model in tables:
            ids = set(db.session.scalars(select(model.user_id)))
            assert forgotten not in ids, model
            assert other in ids, model
        assert db.session.scalars(select(PersonalizeOutbox.event_type)).all() == [
            DELETE_USER
        ]
        # The note is a day old at the earliest: kept, to catch later arrivals.
        assert db.session.scalars(select(ErasedVisitor.user_id)).all() == [forgotten]
