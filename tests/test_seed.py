"""The demo catalog: believable, complete, and idempotent."""

from sqlalchemy import func, select

from demo_catalog import seed_demo_catalog
from models import Category, Doctor, Package, Procedure, db

EXPECTED = {"categories": 8, "procedures": 60, "doctors": 40, "packages": 20}


def catalog_counts() -> dict[str, int]:
    models = {
        "categories": Category,
        "procedures": Procedure,
        "doctors": Doctor,
        "packages": Package,
    }
    return {
        kind: db.session.scalar(select(func.count()).select_from(model))
        for kind, model in models.items()
    }


def test_seed_fills_an_empty_database(app):
    with app.app_context():
        assert seed_demo_catalog() == EXPECTED
        assert catalog_counts() == EXPECTED
        names = set(db.session.scalars(select(Procedure.name)))
        assert {
            "Botox",
            "Dermal Fillers",
            "CoolSculpting",
            "Laser Hair Removal",
            "Chemical Peel",
            "Rhinoplasty",
        } <= names
        cities = set(db.session.scalars(select(Doctor.city)))
        assert len(cities) >= 5


def test_seeding_twice_changes_nothing(app):
    with app.app_context():
        seed_demo_catalog()
        before = catalog_counts()
        slugs = sorted(db.session.scalars(select(Package.slug)))
        assert seed_demo_catalog() == dict.fromkeys(EXPECTED, 0)
        assert catalog_counts() == before
        assert sorted(db.session.scalars(select(Package.slug))) == slugs


def test_every_procedure_has_a_doctor_and_packages_are_consistent(catalog):
    with catalog.app_context():
        for procedure in db.session.scalars(select(Procedure)):
            assert procedure.doctors, f"{procedure.name} has no doctor"
            assert 0 < procedure.price_min <= procedure.price_max
        for package in db.session.scalars(select(Package)):
            assert len(package.procedures) >= 2
            # A doctor only bundles procedures they perform.
            assert set(package.procedures) <= set(package.doctor.procedures)
            assert package.price < sum(p.price_min for p in package.procedures)


def test_seed_command_reports_what_it_added(runner, app):
    result = runner.invoke(args=["seed-demo"])
    assert result.exit_code == 0, result.output
    assert "Added 8 categories, 60 procedures, 40 doctors, 20 packages" in result.output
    assert "Simulated demo traffic: 300 visitors" in result.output
    assert "item neighbours precomputed" in result.output
    again = runner.invoke(args=["seed-demo"])
    assert again.exit_code == 0
    assert "nothing to add" in again.output
    assert "no demo traffic added" in again.output


def test_seed_if_empty_leaves_an_existing_catalog_alone(runner, app):
    with app.app_context():
        db.session.add(Category(name="Our own", slug="our-own", description=""))
        db.session.commit()
    result = runner.invoke(args=["seed-demo", "--if-empty"])
    assert result.exit_code == 0
    assert "not seeding the catalog" in result.output
    assert "no demo traffic added" in result.output
    with app.app_context():
        assert catalog_counts()["procedures"] == 0


def test_seed_command_fails_clearly_without_a_schema(tmp_path):
    from app import create_app
    from helpers import app_config

    app = create_app(app_config(f"sqlite:///{tmp_path}/unmigrated.db"))
    result = app.test_cli_runner().invoke(args=["seed-demo"])
    assert result.exit_code != 0
    assert "could not seed the demo catalog" in result.output
    assert "flask db upgrade" in result.output
