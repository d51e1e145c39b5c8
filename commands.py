"""Command-line tools for admins: `flask seed-demo`, `flask personalization ...`."""

import csv
import json
import time
from datetime import timedelta
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from demo_catalog import catalog_is_empty, seed_demo_catalog
from demo_traffic import DEFAULT_DAYS, has_interactions, seed_demo_traffic
from models import Category, Procedure, UserInteraction, as_utc, db, utcnow
from personalization.evaluation import (
    PROTOCOLS,
    format_table,
    most_popular,
    own_history,
    score_rankings,
    score_recommenders,
    split_log,
    tune_own_history,
    validation_split,
)
from personalization.events import Interaction, ItemKey, VisitorInteraction
from personalization.experiment import format_report
from personalization_system import current_system
from personalize_client import PersonalizeUnavailable
from replay import replay_system


@click.command("seed-demo")
@with_appcontext
@click.option(
    "--if-empty",
    is_flag=True,
    help="Seed the catalog only when it has no categories at all (used by `make run`).",
)
@click.option(
    "--no-traffic",
    is_flag=True,
    help="Do not simulate demo visitors. (They are only ever added to a database "
    "with no visitor interactions.)",
)
def seed_demo_command(if_empty: bool, no_traffic: bool) -> None:
    """Fill the database with the demo catalog (adds only what is missing) and,
    while no visitor has been recorded, a month of simulated demo traffic."""
    try:
        # Simulated visitors (and their made-up consultation requests) only ever
        # go into a database whose catalog this run creates: never a real site's.
        new_database = catalog_is_empty() and not has_interactions(db.session)
        if if_empty and not catalog_is_empty():
            click.echo("Catalog already has data; not seeding the catalog.")
        else:
            added = seed_demo_catalog()
            if any(added.values()):
                click.echo(
                    "Added "
                    + ", ".join(f"{count} {kind}" for kind, count in added.items())
                    + " to the demo catalog."
                )
            else:
                click.echo("Demo catalog already present; nothing to add.")
    except SQLAlchemyError as error:
        raise click.ClickException(
            f"could not seed the demo catalog: {error.__class__.__name__}: {error}. "
            "Has `flask db upgrade` been run?"
        ) from error
    if no_traffic:
        return
    if not new_database:
        click.echo(
            "The database had a catalog or visitors before this run; no demo traffic "
            "added (it only goes into a new demo database)."
        )
        return
    started = time.monotonic()
    try:
        seeded = seed_demo_traffic(current_system())
    except SQLAlchemyError as error:
        raise click.ClickException(
            f"could not seed the demo traffic: {error.__class__.__name__}: {error}"
        ) from error
    if seeded is None:
        click.echo("The catalog has no procedures; no demo traffic added.")
        return
    # What `flask personalization refresh` does on a schedule: the served
    # ranking reads the item neighbours it precomputes.
    refreshed = current_system().refresh_statistics()
    click.echo(
        f"Simulated demo traffic: {seeded['visitors']} visitors "
        f"({seeded['control']} in the control arm), {seeded['events']} events, "
        f"{seeded['impressions']} recommendation lists shown, "
        f"{seeded['consultations']} consultation requests over the last "
        f"{DEFAULT_DAYS} days, and {refreshed['procedure_neighbours']} item "
        f"neighbours precomputed, in {time.monotonic() - started:.1f}s."
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
    system = current_system()
    days = days or system.settings.interaction_retention_days
    started = time.monotonic()
    summary = {}
    try:
        for task in system.retention_tasks(days, utcnow()):
            pending = system.count(task)
            if dry_run or not pending:
                summary[task.label] = pending
                continue
            summary[task.label] = 0
            with click.progressbar(
                length=pending, label=f"Deleting {task.label}"
            ) as bar:
                for deleted in system.delete_in_batches(task, batch_size):
                    summary[task.label] += deleted
                    bar.update(deleted)
    except SQLAlchemyError as error:
        db.session.rollback()
        done = ", ".join(f"{n} {label}" for label, n in summary.items())
        raise click.ClickException(
            f"cleanup failed: {error.__class__.__name__}: {error}"
            + (f" (already deleted: {done})" if done and not dry_run else "")
        ) from error
    verb = "Would delete" if dry_run else "Deleted"
    late = sum(n for label, n in summary.items() if label.endswith("an erasure"))
    click.echo(
        f"{verb} {summary['interactions']} interactions older than {days} days, "
        f"{summary['affinities']} affinities faded below "
        f"{system.settings.affinity_floor} or idle as long, "
        f"{summary['Personalize events']} Personalize events (sent, waiting or "
        f"refused), {summary['webhook keys']} expired webhook keys, "
        f"{summary['impressions']} recommendation lists shown, "
        f"{summary['city choices']} city choices as old and "
        f"{summary['consultation requests']} consultation requests older than "
        f"{system.settings.consultation_retention_days} days, "
        f"and {late} rows stored after their visitor's erasure "
        f"in {time.monotonic() - started:.2f}s."
    )


@personalization.command("refresh")
def refresh_command() -> None:
    """Rebuild item popularity and co-visitation from the interaction log, and
    precompute item neighbours (with a progress bar over visitors)."""
    started = time.monotonic()
    bars: list = []

    def progress(done: int, total: int) -> None:
        if not bars:  # the total is known only once the log is read
            bars.append(click.progressbar(length=total, label="Item neighbours"))
        bars[0].update(done - bars[0].pos)

    try:
        counts = current_system().refresh_statistics(progress=progress)
    except SQLAlchemyError as error:
        raise click.ClickException(f"refresh failed: {error}") from error
    finally:
        for bar in bars:
            bar.render_finish()
    click.echo(
        f"Rebuilt {counts['item_popularity']} popularity rows and "
        f"{counts['procedure_covisitation']} co-visitation pairs and "
        f"{counts['procedure_neighbours']} item neighbours "
        f"in {time.monotonic() - started:.2f}s."
    )


@personalization.command("aggregate")
@click.option(
    "--watch",
    type=click.FloatRange(min=0.05),
    default=None,
    help="Keep aggregating, every this many seconds, until stopped.",
)
def aggregate_command(watch: float | None) -> None:
    """Fold logged interactions into affinities, popularity and co-visitation.

    Server workers do this by themselves every AGGREGATION_INTERVAL_SECONDS;
    this runs it now (after a bulk load, or as a worker of its own with
    --watch). The aggregation lock keeps concurrent runs from counting twice.
    """
    system = current_system()
    while True:
        started = time.monotonic()
        try:
            folded = system.aggregate()
        except SQLAlchemyError as error:
            raise click.ClickException(f"aggregation failed: {error}") from error
        if watch is None or folded:
            click.echo(
                f"Aggregated {folded} interactions "
                f"in {time.monotonic() - started:.2f}s."
            )
        if watch is None:
            return
        time.sleep(watch)


@personalization.command("sync-events")
@click.option(
    "--max-events",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Events to deliver in this run.",
)
def sync_events_command(max_events: int) -> None:
    """Deliver queued interactions to AWS Personalize (PutEvents), and queued
    "forget me" requests (one data deletion job per run)."""
    client = current_app.extensions.get("personalize_client")
    if client is None or not (client.tracking_id or client.deletion):
        raise click.ClickException(
            "Personalize event streaming is off: set AWS_PERSONALIZE_ENABLED=true "
            "and AWS_PERSONALIZE_TRACKING_ID."
        )
    result = current_system().sync_personalize_events(client, max_events=max_events)
    click.echo(f"Sent {result['sent']} events; {result['pending']} still queued.")
    if result["deleted"]:
        click.echo(f"Asked Personalize to delete {result['deleted']} visitors.")
    if result["failed"]:
        raise click.ClickException(
            "Personalize did not accept a batch; it stays queued for the next run."
        )


@personalization.command("sync-catalog")
@click.option(
    "--users-since",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Send visitors whose interests changed in the last DAYS days.",
)
def sync_catalog_command(users_since: int) -> None:
    """Send catalog items and visitors' top categories to AWS Personalize
    (PutItems, PutUsers)."""
    client = current_app.extensions.get("personalize_client")
    if client is None or not (client.items_dataset_arn or client.users_dataset_arn):
        raise click.ClickException(
            "set AWS_PERSONALIZE_ENABLED=true and AWS_PERSONALIZE_ITEMS_DATASET_ARN "
            "or AWS_PERSONALIZE_USERS_DATASET_ARN."
        )
    try:
        sent = current_system().sync_personalize_catalog(
            client, utcnow() - timedelta(days=users_since)
        )
    except PersonalizeUnavailable as error:
        raise click.ClickException(f"Personalize refused a call: {error}") from error
    click.echo(f"Sent {sent['items']} items and {sent['users']} visitors.")


@personalization.command("export")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for the CSV files and their schemas (created if missing).",
)
def export_command(output_dir: Path) -> None:
    """Write interactions, items and users for a Personalize dataset import."""
    try:
        written = current_system().export_datasets(output_dir)
    except (OSError, SQLAlchemyError) as error:
        raise click.ClickException(f"export failed: {error}") from error
    for name, count in written.items():
        click.echo(f"{output_dir / (name + '.csv')}: {count} rows")


@personalization.command("evaluate")
@click.option(
    "--protocol",
    type=click.Choice(PROTOCOLS),
    default="leave-last-out",
    show_default=True,
    help="leave-last-out: each visitor's last interaction with an item new to them "
    "is hidden; temporal: the last 20% of each visitor's interactions; both leave "
    "the visitor's earlier items out of every list. repeat-aware: temporal, with "
    "seen items kept and repeats counted (visitors who come back to procedures).",
)
@click.option("--k", type=click.IntRange(1, 50), default=10, show_default=True)
@click.option(
    "--since",
    type=click.IntRange(min=1),
    default=None,
    help="Only the last DAYS of the log [default: all of it].",
)
def evaluate_command(protocol: str, k: int, since: int | None) -> None:
    """Replay the interaction log and score each ranking strategy on it, next to
    most-popular (and, repeat-aware, the visitor's own history, its decay chosen
    on a validation split), each figure with its standard error."""
    system = current_system()
    weights = system.settings.interaction_weights
    log = site_log(since)
    if len(log) < 2:
        raise click.ClickException(
            "not enough procedure interactions to evaluate (need at least 2)"
        )
    try:
        split = split_log(log, protocol, weights)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    if not split.test:
        raise click.ClickException(
            "no visitor has interactions on both sides of the split"
        )
    categories = db.session.execute(select(Category.id, Category.name)).all()
    procedures = db.session.execute(select(Procedure.id, Procedure.category_id)).all()
    catalog = len(procedures)
    replay = replay_system(
        categories,
        procedures,
        split,
        system.settings,
        current_app.extensions.get("personalize_client"),
    )
    with replay.reading():
        results = score_recommenders(
            replay.recommenders.by_name(),
            replay.profiles.load,
            split.test,
            k,
            catalog,
            split.exclude,
        )
    results["most popular (all time)"] = score_rankings(
        most_popular(split.train, weights), split.test, k, catalog, split.exclude
    )
    chosen = ""
    if protocol == "repeat-aware":
        try:
            best = tune_own_history(
                validation_split(split, weights), weights, k, catalog
            )
        except ValueError:  # nothing left to validate on
            best = 1.0
        results["own history (recency)"] = score_rankings(
            own_history(split.train, weights, best),
            split.test,
            k,
            catalog,
            split.exclude,
        )
        chosen = f" Own history's decay per step, chosen on validation: {best}."
    click.echo(
        f"{len(split.train)} training events, {len(split.test)} test visitors, "
        f"protocol {protocol}, training up to {split.cutoff:%Y-%m-%d %H:%M}. "
        "Mean over test visitors ± standard error." + chosen
    )
    click.echo(format_table(results, k))


@personalization.command("regions")
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Visitors ranked per city (a random sample when a city has more).",
)
@click.option("--k", type=click.IntRange(1, 50), default=10, show_default=True)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Procedures listed per city.",
)
@click.option("--seed", type=int, default=0, show_default=True)
def regions_command(sample: int, k: int, top: int, seed: int) -> None:
    """Per city visitors chose: the procedures most often in their top k, with
    the match rate (share of the city's sampled visitors who got each), labelled
    high (>= 80%), medium (40-79%) or low (< 40%)."""
    cities = current_system().regional_match_rates(sample, k, seed)
    if not cities:
        click.echo("No visitor has chosen a city yet (the city filter on /doctors).")
        return
    names = dict(db.session.execute(select(Procedure.id, Procedure.name)).all())
    for city in cities:
        click.echo(
            f"{city.city}: {city.sample} of {city.visitors} visitors sampled, top {k}"
        )
        for rate in city.procedures[:top]:
            click.echo(
                f"  {names.get(rate.procedure_id, rate.procedure_id)!s:<34} "
                f"{rate.rate:6.1%}  {rate.label:<6}  ({rate.visitors})"
            )


@personalization.command("experiment")
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Count visitors assigned in the last DAYS days.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def experiment_command(days: int, as_json: bool) -> None:
    """Compare the A/B holdout's arms: visitors, impressions, click-through and
    consultation requests per visitor with 95% intervals, the lift of
    personalized over control, and a sample-ratio-mismatch check."""
    report = current_system().experiment_report(days)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    if not any(arm.visitors for arm in report.arms.values()):
        click.echo(
            f"No visitor was assigned to the experiment in the last {days} days: "
            "visit the site (or run `flask seed-demo`) first."
        )
        return
    click.echo(format_report(report))


leads = AppGroup("leads", help="Consultation requests sent from the site.")

# Spreadsheets run a cell that starts with one of these as a formula: a lead's
# name or message must never do that (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
LEAD_COLUMNS = [
    "reference",
    "created_at",
    "about",
    "doctor",
    "procedure",
    "package",
    "name",
    "email",
    "phone",
    "preferred_date",
    "message",
    "consent_to_contact",
]


def since_option(function):
    return click.option(
        "--since",
        "since_days",
        type=click.IntRange(min=1),
        default=None,
        help="Only requests of the last DAYS [default: all].",
    )(function)


def leads_since(since_days: int | None) -> list[dict]:
    since = utcnow() - timedelta(days=since_days) if since_days else None
    try:
        return current_system().leads(since)
    except SQLAlchemyError as error:
        raise click.ClickException(f"could not read the requests: {error}") from error


@leads.command("list")
@since_option
def leads_list_command(since_days: int | None) -> None:
    """Print consultation requests, oldest first."""
    found = leads_since(since_days)
    for lead in found:
        contact = " / ".join(filter(None, [lead["email"], lead["phone"]]))
        when = f" for {lead['preferred_date']}" if lead["preferred_date"] else ""
        click.echo(
            f"{lead['created_at'][:16]}  {lead['reference']}  {lead['name']} "
            f"<{contact}> about {lead['about']}{when}"
        )
    click.echo(f"{len(found)} request{'' if len(found) == 1 else 's'}.")


@leads.command("export")
@since_option
@click.option(
    "--output",
    type=click.File("w", encoding="utf-8"),
    default="-",
    help="CSV file to write [default: standard output].",
)
def leads_export_command(since_days: int | None, output) -> None:
    """Write consultation requests as CSV (one row per request, oldest first)."""
    writer = csv.DictWriter(output, fieldnames=LEAD_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for lead in leads_since(since_days):
        writer.writerow({key: spreadsheet_safe(lead[key]) for key in LEAD_COLUMNS})


def spreadsheet_safe(value):
    """Text a spreadsheet shows as typed: a leading ' stops formulas."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def site_log(since_days: int | None) -> list[VisitorInteraction]:
    """The site's procedure interactions, oldest first."""
    log = UserInteraction
    statement = select(
        log.user_id, log.session_id, log.target_id, log.interaction_type, log.timestamp
    ).where(log.target_type == "procedure")
    if since_days:
        statement = statement.where(
            log.timestamp >= utcnow() - timedelta(days=since_days)
        )
    return [
        VisitorInteraction(
            visitor,
            session,
            Interaction(kind, ItemKey("procedure", item), occurred_at=as_utc(stamp)),
        )
        for visitor, session, item, kind, stamp in db.session.execute(
            statement.order_by(log.id)
        )
    ]


def register_commands(app: Flask) -> None:
    """Attach the project's CLI commands to the app."""
    app.cli.add_command(seed_demo_command)
    app.cli.add_command(personalization)
    app.cli.add_command(leads)
