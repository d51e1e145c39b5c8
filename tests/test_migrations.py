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


def test_credentials_migration_keeps_people_and_fixes_their_titles(empty_database_url):
    """A database seeded when every doctor was stored as "Dr. ...": the upgrade
    strips the "Dr.", makes nurse practitioners NP, and re-seeding adds no one."""
    from sqlalchemy import text

    from demo_catalog import seed_demo_catalog

    app = create_app(app_config(empty_database_url))
    with app.app_context():
        upgrade(revision="73ee8b10fda4")
        with db.engine.begin() as connection:
            for index, (name, title) in enumerate(
                [
                    ("Dr. Maya Chen", "Board-Certified Dermatologist"),
                    ("Dr. Sam Ortiz", "Aesthetic Nurse Practitioner"),
                    ("Dr. Lee Park", "Physician Assistant, Lasers"),
                ]
            ):
                connection.execute(
                    text(
                        "INSERT INTO doctors (name, slug, title, city, rating, "
                        "review_count, bio) VALUES (:name, :slug, :title, "
                        "'Miami', 4.5, 10, '')"
                    ),
                    {"name": name, "slug": f"d{index}", "title": title},
                )
        upgrade()
        rows = db.session.execute(
            text("SELECT name, credentials FROM doctors ORDER BY slug")
        ).all()
        assert [tuple(row) for row in rows] == [
            ("Maya Chen", "MD"),
            ("Sam Ortiz", "NP"),
            ("Lee Park", "PA-C"),
        ]
        seed_demo_catalog()
        seed_demo_catalog()  # a second run adds nothing
        names = db.session.scalars(text("SELECT name FROM doctors")).all()
        assert len(names) == len(set(names))
        db.session.remove()  # end the read: the downgrade alters the table
        downgrade(revision="73ee8b10fda4")
        restored = db.session.scalars(
            text("SELECT name FROM doctors WHERE slug = 'd0'")
        )
        assert restored.one() == "Dr. Maya Chen"
        db.session.remove()
        db.engine.dispose()


def test_impressions_stored_before_item_count_are_counted(empty_database_url):
    from sqlalchemy import text

    app = create_app(app_config(empty_database_url))
    with app.app_context():
        upgrade(revision="6830d1eb346c")
        with db.engine.begin() as connection:
            for list_id, items in (("a" * 16, '[[1,"engine"],[2,"fallback"]]'),):
                connection.execute(
                    text(
                        "INSERT INTO recommendation_impressions (id, user_id, "
                        "request_id, list_name, item_kind, items) VALUES "
                        "(:id, 'v', 'r', 'home:procedure', 'procedure', :items)"
                    ),
                    {"id": list_id, "items": items},
                )
        upgrade()
        counts = db.session.scalars(
            text("SELECT item_count FROM recommendation_impressions")
        ).all()
        assert counts == [2]
        db.session.remove()
        db.engine.dispose()
