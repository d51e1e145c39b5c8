"""Migrations build the schema from empty, and agree with the models."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from app import create_app
from helpers import app_config, create_postgres_database, drop_postgres_database
from models import db


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request, tmp_path):
    """A database with no tables at all, of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.db"
        return
    url = create_postgres_database("antidote_migrations")
    yield url.render_as_string(hide_password=False)
    drop_postgres_database(url)


def pending_changes(app) -> list:
    """List what autogenerate would still write: empty when models and schema agree."""
    with db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": False}
        )
        return compare_metadata(context, db.metadata)


def test_upgrade_from_empty_matches_the_models(empty_database_url):
    app = create_app(app_config(empty_database_url))
    with app.app_context():
        upgrade()
        tables = set(inspect(db.engine).get_table_names())
        assert {
            "categories",
            "procedures",
            "doctors",
            "packages",
            "user_interactions",
            "user_category_affinity",
        } <= tables
        assert pending_changes(app) == []

        downgrade(revision="base")
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}

        upgrade()
        assert pending_changes(app) == []
        db.engine.dispose()
