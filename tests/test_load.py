"""A bounded load test: LOAD_TEST_SECONDS (default 60) of mixed traffic from many
visitors against the real site under gunicorn on 127.0.0.1, on SQLite (concurrent
writers in several processes) and on PostgreSQL. It must end with zero 5xx and
every event the site accepted present in the database."""

import json
import os
import random
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg2
import pytest
import requests
from sqlalchemy.engine import make_url

from helpers import (
    PROJECT,
    WebVisitor,
    count_stored,
    create_postgres_database,
    drop_postgres_database,
    seeded_site,
)

# A minute of load per database: alone, or it slows every other test's server.
pytestmark = pytest.mark.serial

SECONDS = float(os.environ.get("LOAD_TEST_SECONDS", "60"))
VISITORS = 10
WORKERS = 4
WEBHOOK_SECRET = "load-test-webhook-secret"
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", PROJECT / "test-artifacts"))


@pytest.fixture(params=["sqlite", "postgresql"])
def load_database(request, tmp_path):
    """A database of the load test's own, dropped afterwards."""
    if request.param == "sqlite":
        path = tmp_path / "load.db"
        yield f"sqlite:///{path}", lambda sql: sqlite3.connect(path).execute(sql)
        return
    url = create_postgres_database("antidote_load")
    rendered = url.render_as_string(hide_password=False)

    def query(sql):
        connection = psycopg2.connect(rendered.replace("+psycopg2", ""))
        cursor = connection.cursor()
        cursor.execute(sql)
        return cursor

    try:
        yield rendered, query
    finally:
        drop_postgres_database(url)


class Tally:
    """What the site answered, and what it said it accepted, across threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.statuses = Counter()
        self.server_errors = []
        self.accepted_events = 0
        self.webhook_processed = 0

    def record(self, label: str, answer: requests.Response) -> None:
        with self.lock:
            self.statuses[answer.status_code] += 1
            if answer.status_code >= 500:
                self.server_errors.append(
                    (label, answer.status_code, answer.text[:200])
                )


def visit(base_url: str, number: int, ids: dict, tally: Tally, until: float) -> None:
    """One visitor's session: browse, click, search, ask for recommendations."""
    chance = random.Random(number)
    visitor = WebVisitor(base_url, agent=f"Mozilla/5.0 LoadTest/{number}")
    while time.monotonic() < until:
        roll = chance.random()
        if roll < 0.35:
            events = [
                {
                    "interaction_type": chance.choice(["click", "view"]),
                    "target_type": "procedure",
                    "target_id": chance.choice(ids["procedures"]),
                    "metadata": {"load": number},
                }
                for _ in range(chance.randint(1, 5))
            ]
            if chance.random() < 0.2:  # a stale id: rejected, the rest kept
                events.append(
                    {
                        "interaction_type": "click",
                        "target_type": "procedure",
                        "target_id": 999_999,
                        "metadata": {"load": number},
                    }
                )
            answer = visitor.track(*events)
            tally.record("track", answer)
            if answer.status_code == 202:
                with tally.lock:
                    tally.accepted_events += answer.json()["accepted"]
        elif roll < 0.55:
            path = chance.choice(
                [
                    "/",
                    f"/categories/{chance.choice(ids['categories'])}",
                    f"/procedures/{chance.choice(ids['procedure_slugs'])}",
                    "/doctors",
                ]
            )
            tally.record("page", visitor.get(path))
        elif roll < 0.7:
            kind = chance.choice(["categories", "procedures", "doctors"])
            tally.record("api", visitor.get(f"/personalization/recommendations/{kind}"))
        elif roll < 0.8:
            query = chance.choice(["botox", "lip filler", "laser", "' OR 1=1 --", "zz"])
            tally.record("search", visitor.get("/search", params={"q": query}))
        elif roll < 0.9:
            send_webhook(base_url, number, chance, ids, tally)
        else:
            tally.record("health", visitor.get("/healthz"))


def send_webhook(base_url, number, chance, ids, tally) -> None:
    events = [
        {
            "event_type": "click",
            "user_id": f"amplitude-user-{number}",
            "insert_id": f"{number}-{chance.random()}",
            "time": int(time.time() * 1000),
            "event_properties": {
                "item_id": f"procedure:{chance.choice(ids['procedure_slugs'])}"
            },
        }
        for _ in range(chance.randint(1, 10))
    ]
    answer = requests.post(
        base_url + "/webhooks/amplitude/",
        json={"events": events},
        headers={"Authorization": f"Bearer {WEBHOOK_SECRET}"},
        timeout=30,
    )
    tally.record("webhook", answer)
    if answer.status_code == 200:
        with tally.lock:
            tally.webhook_processed += answer.json()["processed"]


def catalog_ids(query) -> dict:
    return {
        "procedures": [row[0] for row in query("SELECT id FROM procedures").fetchall()],
        "procedure_slugs": [
            row[0] for row in query("SELECT slug FROM procedures").fetchall()
        ],
        "categories": [
            row[0] for row in query("SELECT slug FROM categories").fetchall()
        ],
    }


def test_mixed_load_has_no_5xx_and_loses_no_accepted_event(load_database):
    database_url, query = load_database
    settings = {
        "AMPLITUDE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TRACKING_RATE_LIMIT": "100000 per minute",  # load, not abuse
        "TRACKING_RATE_LIMIT_PER_ADDRESS": "100000 per minute",
    }
    with seeded_site(database_url, workers=WORKERS, **settings) as site:
        ids = catalog_ids(query)
        tally = Tally()
        started = time.monotonic()
        until = started + SECONDS
        threads = [
            threading.Thread(target=visit, args=(site.url, n, ids, tally, until))
            for n in range(VISITORS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=SECONDS + 120)
        elapsed = time.monotonic() - started
        output = site.output()

    tracked = query(count_stored("extra_data LIKE '%\"load\":%'")).fetchone()[0]
    from_webhook = query(count_stored("session_id LIKE 'amplitude%'")).fetchone()[0]
    report = {
        "database": make_url(database_url).get_backend_name(),
        "seconds": round(elapsed, 1),
        "requests": sum(tally.statuses.values()),
        "requests_per_second": round(sum(tally.statuses.values()) / elapsed, 1),
        "statuses": dict(tally.statuses),
        "events_accepted": tally.accepted_events,
        "webhook_events_processed": tally.webhook_processed,
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"load-{report['database']}.json").write_text(json.dumps(report))
    print(report)

    assert tally.server_errors == []
    assert "Traceback" not in output
    assert report["requests"] > 100
    assert tally.accepted_events > 0 and tally.webhook_processed > 0
    assert from_webhook == tally.webhook_processed
    assert tracked == tally.accepted_events
