"""Webhook ingest: events per second through POST /webhooks/amplitude/ in batches of
1000, against the ceiling of inserting the same rows with one bare Core INSERT,
measured in the same run on SQLite and PostgreSQL.

The app is driven in-process (Flask test client): with 1000 events a request, HTTP
overhead is well under 1% of the work, and the figure isolates the ingest path.

    .venv/bin/python bench/webhook_ingest.py [--batches 20] [--write BENCHMARKS.md]
"""

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("SECRET_KEY", "benchmark-only")

from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

from app import create_app  # noqa: E402
from bench.ranking_latency import scratch_database  # noqa: E402
from bench.report import replace_section  # noqa: E402
from demo_catalog import seed_demo_catalog  # noqa: E402
from models import Doctor, Procedure, UserInteraction, db, utcnow  # noqa: E402

BATCH = 1000
SECRET = "bench-secret"
TYPES = ["view"] * 5 + ["click"] * 3 + ["bookmark", "share"]


def batch(rng: random.Random, procedures: list[int], doctors: list[int]) -> list[dict]:
    """1000 realistic export-format events: 200 users, mostly procedure views."""
    now_ms = int(time.time() * 1000)
    events = []
    for _ in range(BATCH):
        kind, ids = (
            ("doctor", doctors) if rng.random() < 0.2 else ("procedure", procedures)
        )
        events.append(
            {
                "event_type": rng.choice(TYPES),
                "user_id": f"amplitude-user-{rng.randrange(200)}",
                "uuid": str(uuid.UUID(int=rng.getrandbits(128))),
                "time": now_ms - rng.randrange(3_600_000),
                "event_properties": {"item_id": f"{kind}:{rng.choice(ids)}"},
            }
        )
    return events


def run(kind: str, batches: int) -> dict:
    url, cleanup = scratch_database(kind)
    try:
        app = create_app(
            {
                "SQLALCHEMY_DATABASE_URI": url,
                "TESTING": True,
                "AMPLITUDE_WEBHOOK_SECRET": SECRET,
            }
        )
        client = app.test_client()
        # As under gunicorn: requests append, the aggregator folds in after
        # (timed below, on its own).
        system = app.extensions["personalization"]
        system.aggregate_inline = False
        with app.app_context():
            upgrade()
            seed_demo_catalog()
            procedures = list(db.session.scalars(select(Procedure.id)))
            doctors = list(db.session.scalars(select(Doctor.id)))
        rng = random.Random(7)
        webhook, ceiling = [], []
        for _ in range(batches + 2):  # the first two warm up
            events = batch(rng, procedures, doctors)
            # Encoded before the clock starts: a server receives bytes, and
            # encoding them is the sender's work.
            body = json.dumps({"events": events})
            started = time.perf_counter()
            response = client.post(
                "/webhooks/amplitude/",
                data=body,
                content_type="application/json",
                headers={"Authorization": f"Bearer {SECRET}"},
            )
            webhook.append(time.perf_counter() - started)
            assert response.get_json()["processed"] == BATCH, response.get_json()
            rows = [
                {
                    "user_id": f"{i:032x}",
                    "session_id": "bench",
                    "interaction_type": e["event_type"],
                    "target_type": e["event_properties"]["item_id"].split(":")[0],
                    "target_id": int(e["event_properties"]["item_id"].split(":")[1]),
                    "timestamp": utcnow(),
                }
                for i, e in enumerate(events)
            ]
            with app.app_context():
                started = time.perf_counter()
                db.session.execute(insert(UserInteraction), rows)
                db.session.commit()
                ceiling.append(time.perf_counter() - started)
        with app.app_context():
            started = time.perf_counter()
            aggregated = system.aggregate()
            aggregation = time.perf_counter() - started
            db.session.remove()
            db.engine.dispose()
        webhook_rate = BATCH / statistics.median(webhook[2:])
        ceiling_rate = BATCH / statistics.median(ceiling[2:])
        result = {
            "database": kind,
            "webhook": webhook_rate,
            "ceiling": ceiling_rate,
            "ratio": webhook_rate / ceiling_rate,
            "p50_ms": statistics.median(webhook[2:]) * 1000,
            # The aggregator's pace over every event the webhook stored (each
            # event of this export names one item: one log row), and the pace
            # of both together: what a site sustains.
            "aggregation": aggregated / aggregation,
            "sustained": aggregated / (sum(webhook) + aggregation),
        }
        result["sustained_ratio"] = result["sustained"] / ceiling_rate
        print(result, flush=True)
        return result
    finally:
        cleanup()


def markdown(results: list[dict], batches: int) -> str:
    lines = [
        f"Command: `.venv/bin/python bench/webhook_ingest.py` ({batches} batches of "
        f"{BATCH} events per database after 2 warm-up batches; medians; each "
        "body is JSON-encoded before its request's clock starts). Events are "
        "export-format clicks, views, bookmarks and shares of 200 users on procedures "
        "and doctors, each with a uuid. Ceiling: the same rows inserted into "
        "`user_interactions` by one bare Core INSERT, in the same run.",
        "",
        "| database | webhook events/s | ms per 1000-event request | "
        "ceiling rows/s (bare INSERT) | ratio webhook / ceiling | "
        "aggregator events/s | sustained events/s (requests + aggregation) | "
        "ratio sustained / ceiling |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['database']} | {r['webhook']:,.0f} | {r['p50_ms']:.0f} | "
            f"{r['ceiling']:,.0f} | {r['ratio']:.2f} | {r['aggregation']:,.0f} | "
            f"{r['sustained']:,.0f} | {r['sustained_ratio']:.2f} |"
        )
    lines += [
        "",
        "The webhook does more per event than the ceiling: it authenticates, "
        "reads the shape, resolves items and visitors, de-duplicates (one more "
        "insert) and lists the rows for the aggregator, in one transaction. "
        "The aggregator then folds them into affinities, item popularity and "
        "co-visitation, a batch of AGGREGATION_BATCH rows per transaction: the "
        "sustained column counts both, one after the other on one core.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    results = [run(kind, args.batches) for kind in args.databases.split(",")]
    table = markdown(results, args.batches)
    print(table)
    if args.write:
        replace_section(args.write, "webhook-ingest", table)


if __name__ == "__main__":
    main()
