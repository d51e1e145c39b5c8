"""Bulk export for AWS Personalize dataset imports: interactions, items and users as
CSV, with the Avro schema of each, streamed so memory stays flat."""

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from itertools import islice
from pathlib import Path

from sqlalchemy import func, select

from models import (
    Category,
    Doctor,
    Package,
    Procedure,
    RecommendationImpression,
    UserCategoryAffinity,
    UserInteraction,
    as_utc,
    doctor_procedures,
    package_procedures,
)
from personalization.events import ITEM_KINDS, ItemKey
from personalization.settings import Settings
from personalize_client import (
    PersonalizeClient,
    impression_ids,
    personalize_event_type,
)

STREAM_ROWS = 5000
# Personalize separates the values of a multi-valued categorical field with "|".
MULTI_VALUE_SEPARATOR = "|"


def avro_schema(name: str, fields: list[tuple[str, str | list, bool]]) -> dict:
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
            ("IMPRESSION", ["null", "string"], False),
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


def shown_lists(
    session, list_ids: Iterable[str | None]
) -> dict[str, tuple[str, list[str]]]:
    """Recommendation lists by id: whom each was shown to, and its item ids
    ("procedure:12") in the order shown (personalization/impressions.py)."""
    wanted = sorted({list_id for list_id in list_ids if list_id})
    found: dict[str, tuple[str, list[str]]] = {}
    shown = RecommendationImpression
    for start in range(0, len(wanted), 500):
        rows = session.execute(
            select(shown.id, shown.user_id, shown.item_kind, shown.items).where(
                shown.id.in_(wanted[start : start + 500])
            )
        )
        for list_id, user_id, kind, items in rows:
            found[list_id] = (
                user_id,
                [str(ItemKey(kind, entry[0])) for entry in json.loads(items)],
            )
    return found


def list_id_in(extra_data: str | None) -> str | None:
    """The list_id an interaction's stored metadata names, if any."""
    if not extra_data or '"list_id"' not in extra_data:
        return None
    try:
        list_id = json.loads(extra_data).get("list_id")
    except (ValueError, AttributeError):
        return None
    return list_id if isinstance(list_id, str) else None


def interaction_rows(session, settings: Settings) -> Iterator[list]:
    """Interactions with a catalog item, as Personalize reads them: the mapped
    EVENT_TYPE, the weight as EVENT_VALUE, and for an event on a recommended
    card the list it was shown in as IMPRESSION ("procedure:12|procedure:7")."""
    log = UserInteraction
    statement = (
        select(
            log.user_id,
            log.target_type,
            log.target_id,
            log.timestamp,
            log.interaction_type,
            log.extra_data,
        )
        .where(log.target_type.in_(ITEM_KINDS))
        .order_by(log.id)
    )
    rows = stream(session, statement)
    while chunk := list(islice(rows, STREAM_ROWS)):
        lists = shown_lists(session, (list_id_in(row[5]) for row in chunk))
        for visitor_id, kind, item_id, stamp, interaction_type, extra in chunk:
            value = settings.weight(interaction_type)
            event_type = personalize_event_type(interaction_type, value)
            if not event_type:
                continue
            owner, shown = lists.get(list_id_in(extra), (None, []))
            yield [
                visitor_id,
                str(ItemKey(kind, item_id)),
                int(as_utc(stamp).timestamp()),
                event_type,
                value,
                MULTI_VALUE_SEPARATOR.join(impression_ids(shown))
                if owner == visitor_id
                else "",
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


def user_rows(session, since: datetime | None = None) -> Iterator[list]:
    """Each visitor with their strongest category, Personalize's one user field
    (only visitors whose interests changed since `since`, when given)."""
    affinity = UserCategoryAffinity
    rank = (
        func.row_number()
        .over(partition_by=affinity.user_id, order_by=affinity.affinity_score.desc())
        .label("rank")
    )
    ranked = select(affinity.user_id, affinity.category_id, rank)
    if since is not None:
        changed = select(affinity.user_id).where(affinity.last_updated >= since)
        ranked = ranked.where(affinity.user_id.in_(changed))
    ranked = ranked.subquery()
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


def sync_catalog(
    session, client: PersonalizeClient, users_since: datetime | None
) -> dict[str, int]:
    """Bring Personalize's Items and Users datasets up to date (PutItems and
    PutUsers, 10 records a call): every catalog item with its type, categories
    and creation time, and each visitor whose interests changed since
    `users_since` with their top category. Raise PersonalizeUnavailable if a
    call is refused; records are replaced by id, so a re-run is harmless."""
    sent = {"items": 0, "users": 0}
    if client.items_dataset_arn:
        sent["items"] = client.put_items(
            [
                {
                    "itemId": item_id,
                    "properties": json.dumps(
                        {
                            "itemType": kind,
                            "category": category,
                            "creationTimestamp": created,
                        }
                    ),
                }
                for item_id, kind, category, created in item_rows(session)
            ]
        )
    if client.users_dataset_arn:
        sent["users"] = client.put_users(
            [
                {"userId": visitor_id, "properties": json.dumps({"topCategory": slug})}
                for visitor_id, slug in user_rows(session, users_since)
            ]
        )
    return sent
