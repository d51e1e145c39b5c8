"""Bulk export for AWS Personalize dataset imports: interactions, items and users as
CSV, with the Avro schema of each, streamed so memory stays flat."""

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import func, select

from models import (
    Category,
    Doctor,
    Package,
    Procedure,
    UserCategoryAffinity,
    UserInteraction,
    as_utc,
    doctor_procedures,
    package_procedures,
)
from personalization.events import ITEM_KINDS, ItemKey
from personalization.settings import Settings

STREAM_ROWS = 5000
# Personalize separates the values of a multi-valued categorical field with "|".
MULTI_VALUE_SEPARATOR = "|"


def avro_schema(name: str, fields: list[tuple[str, str, bool]]) -> dict:
    """A Personalize dataset schema: Avro, fields as (name, type, categorical)."""
    return {
        "type": "record",
        "name": name,
        "namespace": "com.amazonaws.personalize.schema",
        "fields": [
            {
                "name": field,
                "type": kind,
                **({"categorical": True} if categorical else {}),
            }
            for field, kind, categorical in fields
        ],
        "version": "1.0",
    }


SCHEMAS = {
    "interactions": avro_schema(
        "Interactions",
        [
            ("USER_ID", "string", False),
            ("ITEM_ID", "string", False),
            ("TIMESTAMP", "long", False),
            ("EVENT_TYPE", "string", False),
            ("EVENT_VALUE", "float", False),
        ],
    ),
    "items": avro_schema(
        "Items",
        [
            ("ITEM_ID", "string", False),
            ("ITEM_TYPE", "string", True),
            ("CATEGORY", "string", True),
            ("CREATION_TIMESTAMP", "long", False),
        ],
    ),
    "users": avro_schema(
        "Users", [("USER_ID", "string", False), ("TOP_CATEGORY", "string", True)]
    ),
}


def stream(session, statement) -> Iterator:
    """Yield result rows in chunks (a server-side cursor on PostgreSQL)."""
    result = session.execute(statement.execution_options(yield_per=STREAM_ROWS))
    yield from result


def interaction_rows(session, settings: Settings) -> Iterator[list]:
    """Interactions with a catalog item, as Personalize reads them."""
    log = UserInteraction
    statement = (
        select(
            log.user_id,
            log.target_type,
            log.target_id,
            log.timestamp,
            log.interaction_type,
        )
        .where(log.target_type.in_(ITEM_KINDS))
        .order_by(log.id)
    )
    for visitor_id, kind, item_id, stamp, interaction_type in stream(
        session, statement
    ):
        yield [
            visitor_id,
            str(ItemKey(kind, item_id)),
            int(as_utc(stamp).timestamp()),
            interaction_type,
            settings.weight(interaction_type),
        ]


def item_rows(session) -> Iterator[list]:
    """Every catalog item with its type, categories and creation time."""
    slug_of = dict(session.execute(select(Category.id, Category.slug)).all())

    def categories_by(link) -> dict[int, str]:
        pairs = session.execute(
            select(link, Procedure.category_id)
            .join(Procedure, Procedure.id == link.table.c.procedure_id)
            .distinct()
        )
        found: dict[int, set[str]] = {}
        for owner, category_id in pairs:
            found.setdefault(owner, set()).add(slug_of[category_id])
        return {k: MULTI_VALUE_SEPARATOR.join(sorted(v)) for k, v in found.items()}

    of_doctor = categories_by(doctor_procedures.c.doctor_id)
    of_package = categories_by(package_procedures.c.package_id)
    sources = [
        ("category", Category, lambda item: slug_of[item.id]),
        ("procedure", Procedure, lambda item: slug_of[item.category_id]),
        ("doctor", Doctor, lambda item: of_doctor.get(item.id)),
        ("package", Package, lambda item: of_package.get(item.id)),
    ]
    for kind, model, category_of in sources:
        for item in session.scalars(select(model).order_by(model.id)):
            yield [
                str(ItemKey(kind, item.id)),
                kind,
                category_of(item) or "none",
                int(as_utc(item.created_at).timestamp()),
            ]


def user_rows(session) -> Iterator[list]:
    """Each visitor with their strongest category, Personalize's one user field."""
    affinity = UserCategoryAffinity
    rank = (
        func.row_number()
        .over(partition_by=affinity.user_id, order_by=affinity.affinity_score.desc())
        .label("rank")
    )
    ranked = select(affinity.user_id, affinity.category_id, rank).subquery()
    statement = (
        select(ranked.c.user_id, Category.slug)
        .join(Category, Category.id == ranked.c.category_id)
        .where(ranked.c.rank == 1)
        .order_by(ranked.c.user_id)
    )
    for visitor_id, slug in stream(session, statement):
        yield [visitor_id, slug]


def export_datasets(session, settings: Settings, output_dir: Path) -> dict[str, int]:
    """Write the three datasets and their schemas; return rows written per file."""
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    sources = {
        "interactions": interaction_rows(session, settings),
        "items": item_rows(session),
        "users": user_rows(session),
    }
    for name, rows in sources.items():
        header = [field["name"] for field in SCHEMAS[name]["fields"]]
        count = 0
        with open(output_dir / f"{name}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for row in rows:
                writer.writerow(row)
                count += 1
        (output_dir / f"{name}_schema.json").write_text(
            json.dumps(SCHEMAS[name], indent=2) + "\n"
        )
        written[name] = count
    return written
