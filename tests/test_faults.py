"""Failing dependencies leave the site standing: the database stopping mid-run, and
AWS Personalize answering slowly, with 5xx or with throttling. The real site under
gunicorn, as in production."""

import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest

from fake_personalize import FakePersonalize
from helpers import (
    WebVisitor,
    count_stored,
    seeded_site,
    skip_or_fail,
    unused_port,
)

# Pages timed against their budget while servers and databases fail: alone.
pytestmark = pytest.mark.serial


def click(procedure_id: int) -> dict:
    return {
        "interaction_type": "click",
        "target_type": "procedure",
        "target_id": procedure_id,
    }


# The database stops mid-run


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, so it can be stopped and started
    without touching the server other tests use. Runs as `postgres` when the
    tests run as root (PostgreSQL refuses to run as root)."""

    def __init__(self):
        self.bin = Path(shutil.which("pg_ctl") or "").resolve().parent
        self.root = Path(tempfile.mkdtemp(prefix="antidote-pg-"))
        self.data = self.root / "data"
        self.port = unused_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)

    def run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root} -c fsync=off"
        )
        log = str(self.root / "server.log")
        self.run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start"
        )

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def count(self, sql: str) -> int:
        with psycopg2.connect(self.url, connect_timeout=5) as connection:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchone()[0]


@pytest.fixture
def private_postgres():
    if not shutil.which("pg_ctl") or not shutil.which("initdb"):
        skip_or_fail("PostgreSQL server binaries (pg_ctl, initdb) are not on PATH")
    server = PrivatePostgres()
    try:
        server.init()
        server.start()
    except (subprocess.CalledProcessError, KeyError) as error:
        shutil.rmtree(server.root, ignore_errors=True)
        skip_or_fail(f"cannot start a private PostgreSQL cluster: {error}")
    yield server
    try:
        server.stop()
    except subprocess.CalledProcessError:
        pass  # already stopped
    shutil.rmtree(server.root, ignore_errors=True)


def wait_for_health(visitor: WebVisitor, status: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if visitor.get("/healthz").status_code == status:
            return
        time.sleep(0.2)
    raise AssertionError(f"/healthz never answered {status}")


def test_database_stopping_mid_run_gives_503_then_recovers(private_postgres):
    database = private_postgres
    with seeded_site(database.url, workers=2) as site:
        visitor = WebVisitor(site.url)
        botox = procedure_ids(visitor)[0]
        assert visitor.track(click(botox)).status_code == 202

        database.stop()
        for _ in range(3):
            health = visitor.get("/healthz")
            assert health.status_code == 503
            assert health.json() == {"status": "unavailable", "database": "unreachable"}
            tracked = visitor.track(click(botox))
            assert tracked.status_code == 503
            assert int(tracked.headers["Retry-After"]) == 30
            assert tracked.json()["error"] == "service temporarily unavailable"
            for path in ("/", "/procedures/botox", "/search?q=lips"):
                page = visitor.get(path)
                assert page.status_code == 503, path
                assert "Retry-After" in page.headers
                assert "<html" in page.text.lower()
            recommended = visitor.get("/personalization/recommendations/procedures")
            assert recommended.status_code == 503

        database.start()
        wait_for_health(visitor, 200)  # no restart: the pool reconnects by itself
        for _ in range(4):  # both workers, with connections from before the outage
            assert visitor.get("/").status_code == 200
            assert visitor.track(click(botox)).status_code == 202
        output = site.output()

    assert "Traceback" not in output
    assert (
        database.count(count_stored("interaction_type = 'click'")) == 5
    )  # one before the outage, four after; none half-written during it


def test_sqlite_under_concurrent_writers_loses_no_event(tmp_path):
    """Four gunicorn worker processes write to one SQLite file at once: sixteen
    tabs of one visitor (so every batch updates the same affinity row) send ten
    batches each, all released together. Every event is accepted and stored."""
    database = tmp_path / "site.db"
    tabs, batches, per_batch = 16, 10, 5
    with seeded_site(
        f"sqlite:///{database}",
        workers=4,
        TRACKING_RATE_LIMIT="100000 per minute",
        TRACKING_RATE_LIMIT_PER_ADDRESS="100000 per minute",
    ) as site:
        visitors = [WebVisitor(site.url) for _ in range(tabs)]
        events = [click(pid) for pid in procedure_ids(visitors[0])[:per_batch]]
        barrier = threading.Barrier(tabs)
        answers = []

        def send_batches(visitor: WebVisitor) -> None:
            barrier.wait()
            for _ in range(batches):
                answer = visitor.track(*events)
                answers.append((answer.status_code, answer.json().get("accepted")))

        threads = [threading.Thread(target=send_batches, args=(v,)) for v in visitors]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert "Traceback" not in site.output()

    assert answers == [(202, per_batch)] * (tabs * batches)
    with sqlite3.connect(database) as connection:
        [(stored,)] = connection.execute(
            count_stored("interaction_type = 'click'")
        ).fetchall()
    assert stored == tabs * batches * per_batch


# AWS Personalize fails


PERSONALIZE_SETTINGS = {
    "AWS_PERSONALIZE_ENABLED": "true",
    "AWS_PERSONALIZE_CAMPAIGN_ARN": "arn:aws:personalize:us-east-1:1:campaign/rank",
    "AWS_PERSONALIZE_TRACKING_ID": "tracking-1",
    "AWS_PERSONALIZE_READ_TIMEOUT": "0.2",
    "AWS_PERSONALIZE_CONNECT_TIMEOUT": "0.1",
    "AWS_PERSONALIZE_SYNC_INTERVAL": "0.5",
    "AWS_PERSONALIZE_COOLDOWN_SECONDS": "1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}
# What a page may take when Personalize misbehaves: the configured budget (the
# default, 0.5 s), plus the page itself on a loaded 2-core machine.
PAGE_BUDGET_SECONDS = 0.5 + 0.3


@contextmanager
def site_with_fake_personalize(database_url: str):
    fake = FakePersonalize().start()
    try:
        settings = dict(PERSONALIZE_SETTINGS, AWS_PERSONALIZE_ENDPOINT_URL=fake.url)
        with seeded_site(database_url, workers=2, **settings) as site:
            yield site, fake
    finally:
        fake.stop()


def slowest_page(visitor: WebVisitor, paths: list[str], rounds: int = 3) -> float:
    slowest = 0.0
    for _ in range(rounds):
        for path in paths:
            started = time.perf_counter()
            answer = visitor.get(path)
            slowest = max(slowest, time.perf_counter() - started)
            assert answer.status_code == 200, (path, answer.status_code)
    return slowest


@pytest.mark.parametrize("mode", ["slow", "error", "throttle"])
def test_personalize_faults_never_slow_a_page_past_the_budget(tmp_path, mode):
    with site_with_fake_personalize(f"sqlite:///{tmp_path}/site.db") as (site, fake):
        visitor = WebVisitor(site.url)
        ids = procedure_ids(visitor)
        assert visitor.track(*[click(pid) for pid in ids[:3]]).status_code == 202
        paths = [
            "/",
            "/procedures/botox",
            "/personalization/recommendations/procedures",
        ]
        fake.mode = "ok"
        slowest_page(visitor, paths, rounds=1)  # warm up both workers
        fake.mode = mode
        fake.delay = 2.0
        slowest = slowest_page(visitor, paths)
        assert slowest < PAGE_BUDGET_SECONDS
        answer = visitor.get("/personalization/recommendations/procedures").json()
        assert answer["source"] in ("affinity", "mixed")
        assert answer["personalized"] is True
        assert "Traceback" not in site.output()


def procedure_ids(visitor: WebVisitor) -> list[int]:
    answer = visitor.get("/personalization/recommendations/procedures?limit=10")
    return [item["id"] for item in answer.json()["items"]]


def test_events_queued_during_a_personalize_outage_are_delivered_after(tmp_path):
    with site_with_fake_personalize(f"sqlite:///{tmp_path}/site.db") as (site, fake):
        fake.mode = "error"
        visitor = WebVisitor(site.url)
        ids = procedure_ids(visitor)
        for pid in ids[:6]:
            assert visitor.track(click(pid)).status_code == 202
        time.sleep(2)  # the sync loop runs, fails and keeps the events
        assert not delivered_items(fake)

        fake.mode = "ok"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(delivered_items(fake)) < 6:
            time.sleep(0.3)
        delivered = delivered_items(fake)
        assert sorted(delivered) == sorted(f"procedure:{pid}" for pid in ids[:6])
        assert "Traceback" not in site.output()


def delivered_items(fake) -> list[str]:
    """Items of clicks the fake accepted (answered 200) through PutEvents."""
    return [
        event["itemId"]
        for path, body, status in fake.answered("/events")
        if status == 200
        for event in body["eventList"]
        if event["eventType"] == "click"
    ]
