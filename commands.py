"""Command-line tools for admins, registered on the app: `flask seed-demo`, ..."""

import click
from flask import Flask
from flask.cli import with_appcontext
from sqlalchemy.exc import SQLAlchemyError

from demo_catalog import catalog_is_empty, seed_demo_catalog


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


def register_commands(app: Flask) -> None:
    """Attach the project's CLI commands to the app."""
    app.cli.add_command(seed_demo_command)
