"""Command-line tools for admins: `flask seed-demo`, `flask personalization ...`."""

import time
from datetime import timedelta

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy.exc import SQLAlchemyError

from demo_catalog import catalog_is_empty, seed_demo_catalog
from models import UserCategoryAffinity, UserInteraction, db, utcnow
from personalization_system import AFFINITY_FLOOR


@click.command("seed-demo")
@with_appcontext
@click.option(
    "--if-empty",
    is_flag=True,
    help="Seed only when the catalog has no categories at all (used by `make run`).",
)
def seed_demo_command(if_empty: bool) -> None:
    """Fill the database with the demo catalog (adds only what is missing)."""
    try:
        if if_empty and not catalog_is_empty():
            click.echo("Catalog already has data; not seeding.")
            return
        added = seed_demo_catalog()
    except SQLAlchemyError as error:
        raise click.ClickException(
            f"could not seed the demo catalog: {error.__class__.__name__}: {error}. "
            "Has `flask db upgrade` been run?"
        ) from error
    if not any(added.values()):
        click.echo("Demo catalog already present; nothing to add.")
        return
    click.echo(
        "Added "
        + ", ".join(f"{count} {kind}" for kind, count in added.items())
        + " to the demo catalog."
    )


personalization = AppGroup(
    "personalization", help="Maintain the personalization data (retention, ...)."
)


@personalization.command("cleanup")
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=None,
    help="Delete interactions older than this many days "
    "[default: INTERACTION_RETENTION_DAYS].",
)
@click.option(
    "--dry-run", is_flag=True, help="Count what would be deleted; delete nothing."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=100_000),
    default=5000,
    show_default=True,
    help="Rows deleted per transaction.",
)
def cleanup_command(days: int | None, dry_run: bool, batch_size: int) -> None:
    """Delete old interactions and faded interest scores, in short batches."""
    days = days or current_app.config["INTERACTION_RETENTION_DAYS"]
    engine = current_app.extensions["personalization_engine"]
    now = utcnow()
    started = time.monotonic()
    work = [
        (
            "interactions",
            UserInteraction,
            engine.expired_interactions(now - timedelta(days=days)),
        ),
        ("affinities", UserCategoryAffinity, engine.faded_affinities(now)),
    ]
    summary = {}
    try:
        for label, model, ids in work:
            pending = engine.count(ids)
            if dry_run or not pending:
                summary[label] = pending
                continue
            summary[label] = 0
            with click.progressbar(length=pending, label=f"Deleting {label}") as bar:
                for deleted in engine.delete_in_batches(model, ids, batch_size):
                    summary[label] += deleted
                    bar.update(deleted)
    except SQLAlchemyError as error:
        db.session.rollback()
        done = ", ".join(f"{n} {label}" for label, n in summary.items())
        raise click.ClickException(
            f"cleanup failed: {error.__class__.__name__}: {error}"
            + (f" (already deleted: {done})" if done and not dry_run else "")
        ) from error
    verb = "Would delete" if dry_run else "Deleted"
    click.echo(
        f"{verb} {summary['interactions']} interactions older than {days} days and "
        f"{summary['affinities']} affinities below {AFFINITY_FLOOR} "
        f"in {time.monotonic() - started:.2f}s."
    )


def register_commands(app: Flask) -> None:
    """Attach the project's CLI commands to the app."""
    app.cli.add_command(seed_demo_command)
    app.cli.add_command(personalization)
