"""The schema as the product defines it, on both databases."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from app import create_app
from helpers import app_config
from models import Category, UserCategoryAffinity, UserInteraction, db


def test_personalization_tables_match_the_product_schema(app):
    with app.app_context():
        inspector = inspect(db.engine)
        columns = {c["name"]: c for c in inspector.get_columns("user_interactions")}
        assert set(columns) == {
            "id",
            "user_id",
            "session_id",
            "interaction_type",
            "target_type",
            "target_id",
            "extra_data",
            "timestamp",
        }
        assert columns["user_id"]["type"].length == 32
        assert columns["session_id"]["type"].length == 64
        assert columns["interaction_type"]["type"].length == 50
        for required in ("user_id", "session_id", "interaction_type"):
            assert columns[required]["nullable"] is False
        # Indexed: each leads an index, so a lookup by it alone is an index
        # scan (user_id leads (user_id, timestamp), which history reads too).
        leading = {
            ix["column_names"][0] for ix in inspector.get_indexes("user_interactions")
        }
        assert {"user_id", "timestamp", "interaction_type"} <= leading

        affinity = {c["name"] for c in inspector.get_columns("user_category_affinity")}
        assert affinity == {
            "id",
            "user_id",
            "category_id",
            "affinity_score",
            "last_updated",
        }
        indexed = {
            tuple(ix["column_names"])
            for ix in inspector.get_indexes("user_category_affinity")
        }
        assert {("user_id",), ("category_id",)} <= indexed
        unique = inspector.get_unique_constraints("user_category_affinity")
        assert [u["column_names"] for u in unique] == [["user_id", "category_id"]]


def test_one_affinity_row_per_visitor_and_category(app):
    with app.app_context():
        category = Category(name="Injectables", slug="injectables")
        db.session.add(category)
        db.session.flush()
        db.session.add(UserCategoryAffinity(user_id="a" * 32, category_id=category.id))
        db.session.commit()
        db.session.add(UserCategoryAffinity(user_id="a" * 32, category_id=category.id))
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()


def test_interaction_defaults_and_json_extra_data(app):
    with app.app_context():
        before = datetime.now(UTC) - timedelta(seconds=1)
        db.session.add(
            UserInteraction(
                user_id="b" * 32,
                session_id="s" * 64,
                interaction_type="view",
                target_type="page",
                extra_data=json.dumps({"path": "/"}),
            )
        )
        db.session.commit()
        row = db.session.scalars(select(UserInteraction)).one()
        stamp = row.timestamp
        if stamp.tzinfo is None:  # SQLite keeps no zone; values are written in UTC
            stamp = stamp.replace(tzinfo=UTC)
        assert before <= stamp <= datetime.now(UTC) + timedelta(seconds=1)
        assert json.loads(row.extra_data) == {"path": "/"}


def test_database_server_fills_timestamps_for_raw_inserts(app):
    with app.app_context():
        db.session.execute(
            text(
                "INSERT INTO user_interactions (user_id, session_id, interaction_type) "
                "VALUES ('c', 's', 'view')"
            )
        )
        db.session.commit()
        assert db.session.scalars(select(UserInteraction.timestamp)).one() is not None


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(sqlite_url):
    app = create_app(app_config(sqlite_url))
    with app.app_context():
        assert db.session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert db.session.execute(text("PRAGMA busy_timeout")).scalar() == 5000
        assert db.session.execute(text("PRAGMA foreign_keys")).scalar() == 1
        db.session.remove()
        db.engine.dispose()
