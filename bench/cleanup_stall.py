"""Retention cleanup: time to delete 1M expired interactions out of 5M, and the
longest stall a concurrent tracking request sees while it runs, against the same
requests' latencies with no cleanup running (same run), on SQLite and PostgreSQL.

    .venv/bin/python bench/cleanup_stall.py [--rows 5000000] [--expired 1000000]
        [--write BENCHMARKS.md]
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SECRET_KEY", "benchmark-only")

from flask_migrate import upgrade  # noqa: E402
from itsdangerous import URLSafeSerializer  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

from app import create_app  # noqa: E402
from bench.http_load import SECRET, Server, csrf_session, gunicorn  # noqa: E402
from bench.ranking_latency import scratch_database  # noqa: E402
from bench.report import replace_section  # noqa: E402
from demo_catalog import seed_demo_catalog  # noqa: E402
from models import Procedure, UserInteraction, db, utcnow  # noqa: E402

VISITOR = "c3" * 16


def load(url: str, rows: int, expired: int) -> list[int]:
    """`rows` interactions, the first `expired` of them older than 90 days."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
    with app.app_context():
        upgrade()
        seed_demo_catalog()
        procedures = list(db.session.scalars(select(Procedure.id)))
        rng = random.Random(3)
        now = utcnow()
        chunk = []
        for index in range(rows):
            age = rng.uniform(95, 120) if index < expired else rng.uniform(0, 89)
            chunk.append(
                {
                    "user_id": f"{index // 20:032x}",
                    "session_id": "bench",
                    "interaction_type": "view",
                    "target_type": "procedure",
                    "target_id": rng.choice(procedures),
                    "timestamp": now - timedelta(days=age),
                }
            )
            if len(chunk) == 20_000:
                db.session.execute(insert(UserInteraction), chunk)
                db.session.commit()
                chunk = []
        if chunk:
            db.session.execute(insert(UserInteraction), chunk)
            db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return procedures


def track_until(stop: threading.Event, base: str, headers: dict, body: bytes) -> list:
    """Send tracking batches one after another; return each request's latency (ms)."""
    latencies = []
    while not stop.is_set():
        request = urllib.request.Request(
            base + "/personalization/track-interaction", data=body, headers=headers
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def run(kind: str, rows: int, expired: int) -> dict:
    url, cleanup = scratch_database(kind)
    try:
        started = time.perf_counter()
        procedures = load(url, rows, expired)
        print(f"{kind}: loaded {rows:,} rows in {time.perf_counter() - started:.0f}s")
        env = {
            "DATABASE_URL": url,
            "SECRET_KEY": SECRET,
            "TRACKING_RATE_LIMIT": "100000000 per minute",
            "TRACKING_RATE_LIMIT_PER_ADDRESS": "100000000 per minute",
        }
        server = Server(gunicorn(), env)
        try:
            cookie = "antidote_visitor=" + URLSafeSerializer(
                SECRET, salt="visitor-id"
            ).dumps(VISITOR)
            token, session = csrf_session(server.base, cookie)
            headers = {
                "Content-Type": "application/json",
                "X-CSRFToken": token,
                "Cookie": f"{session}; {cookie}",
            }
            body = json.dumps(
                {
                    "events": [
                        {
                            "interaction_type": "click",
                            "target_type": "procedure",
                            "target_id": pid,
                        }
                        for pid in procedures[:10]
                    ]
                }
            ).encode()

            def measure(seconds: float | None, during=None) -> list:
                stop = threading.Event()
                result: list = []
                worker = threading.Thread(
                    target=lambda: result.extend(
                        track_until(stop, server.base, headers, body)
                    )
                )
                worker.start()
                if during:
                    outcome = during()
                else:
                    time.sleep(seconds)
                    outcome = None
                stop.set()
                worker.join()
                return result, outcome

            def clean() -> float:
                started = time.perf_counter()
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "flask",
                        "--app",
                        "app",
                        "personalization",
                        "cleanup",
                        "--batch-size",
                        "5000",
                    ],
                    cwd=ROOT,
                    env={**os.environ, **env},
                    check=True,
                    capture_output=True,
                )
                return time.perf_counter() - started

            during, seconds = measure(None, clean)
            quiet, _ = measure(min(seconds, 30))
        finally:
            server.stop()
        result = {
            "database": kind,
            "rows": rows,
            "expired": expired,
            "cleanup_s": seconds,
            "max_ms": max(during),
            "p99_ms": statistics.quantiles(during, n=100, method="inclusive")[98],
            "quiet_max_ms": max(quiet),
            "quiet_p99_ms": statistics.quantiles(quiet, n=100, method="inclusive")[98],
            "requests": len(during),
        }
        print(json.dumps(result), flush=True)
        return result
    finally:
        cleanup()


def markdown(results: list[dict]) -> str:
    lines = [
        "Command: `.venv/bin/python bench/cleanup_stall.py` (`flask personalization "
        "cleanup --batch-size 5000` on a log of "
        f"{results[0]['rows']:,} interactions, {results[0]['expired']:,} of them past "
        "the 90-day retention; meanwhile one client sends tracking batches of 10 "
        "back to back to gunicorn (2 workers). Baseline: the same client with no "
        "cleanup running, right after, same run.",
        "",
        "| database | cleanup time | tracking max / p99 ms during cleanup | "
        "max / p99 ms without cleanup | ratio of max |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        during = f"{r['max_ms']:.0f} / {r['p99_ms']:.0f} ({r['requests']:,} requests)"
        quiet = f"{r['quiet_max_ms']:.0f} / {r['quiet_p99_ms']:.0f}"
        ratio = r["max_ms"] / r["quiet_max_ms"]
        lines.append(
            f"| {r['database']} | {r['cleanup_s']:.1f} s | {during} | {quiet} "
            f"| {ratio:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--expired", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    results = [run(kind, args.rows, args.expired) for kind in args.databases.split(",")]
    table = markdown(results)
    print(table)
    if args.write:
        replace_section(args.write, "cleanup-stall", table)


if __name__ == "__main__":
    main()
