"""Ranking latency vs. interaction-log size: p50/p99 of every ranking with 10k, 100k
and 1M interactions in the database, on SQLite and PostgreSQL.

Each figure is also given as a ratio to the same ranking at the smallest log size,
measured in the same run (this machine is noisy): flat means a ratio near 1.

    .venv/bin/python bench/ranking_latency.py [--sizes 10000,100000,1000000]
        [--databases sqlite,postgresql] [--rankings 300] [--write BENCHMARKS.md]
"""

import argparse
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("SECRET_KEY", "benchmark-only")

from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

from app import create_app  # noqa: E402
from bench.report import replace_section  # noqa: E402
from demo_catalog import seed_demo_catalog  # noqa: E402
from models import Procedure, UserInteraction, db, utcnow  # noqa: E402
from personalization.events import ItemKey  # noqa: E402

HOME = {"category": 6, "procedure": 6, "doctor": 9}
EVENTS_PER_VISITOR = 20
KINDS = ["view"] * 6 + ["click"] * 3 + ["form_submit"]


def scratch_database(kind: str):
    """Create an empty database of the given kind; return (url, cleanup)."""
    if kind == "sqlite":
        folder = tempfile.mkdtemp(prefix="antidote-bench-")
        return f"sqlite:///{folder}/bench.db", lambda: shutil.rmtree(folder)
    import psycopg2

    server = os.environ.get(
        "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"antidote_bench_{secrets.token_hex(4)}"
    admin = psycopg2.connect(server)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')

    def drop():
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    base = server.rsplit("/", 1)[0]
    return f"{base}/{name}", drop


def add_interactions(count: int, start_visitor: int, catalog: dict[int, list[int]]):
    """Insert `count` synthetic interactions: visitors who favour one or two
    categories, spread over the last 30 days. Returns the next visitor number."""
    rng = random.Random(start_visitor)
    categories = list(catalog)
    now = utcnow()
    rows = []
    visitor = start_visitor
    while count > 0:
        favourites = rng.sample(categories, k=rng.choice([1, 1, 2]))
        user_id = f"{visitor:032x}"
        for _ in range(min(EVENTS_PER_VISITOR, count)):
            category = rng.choice(favourites)
            rows.append(
                {
                    "user_id": user_id,
                    "session_id": "bench",
                    "interaction_type": rng.choice(KINDS),
                    "target_type": "procedure",
                    "target_id": rng.choice(catalog[category]),
                    "timestamp": now - timedelta(seconds=rng.randrange(30 * 86400)),
                }
            )
            count -= 1
        visitor += 1
        if len(rows) >= 20_000:
            db.session.execute(insert(UserInteraction), rows)
            db.session.commit()
            rows = []
    if rows:
        db.session.execute(insert(UserInteraction), rows)
        db.session.commit()
    return visitor


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def time_rankings(engine, visitors: list[str], procedures: list[int]) -> dict:
    """p50/p99 in ms of each ranking over the sampled visitors."""
    cases = {
        "home page (3 sections)": lambda v, p: engine.home_sections(v, HOME),
        "categories": lambda v, p: engine.recommend("category", v, 6),
        "procedures": lambda v, p: engine.recommend("procedure", v, 6),
        "doctors": lambda v, p: engine.recommend("doctor", v, 9),
        "similar procedures": lambda v, p: engine.similar(ItemKey("procedure", p), 6),
    }
    results = {}
    for name, call in cases.items():
        samples = []
        for visitor, procedure in zip(visitors, procedures, strict=True):
            started = time.perf_counter()
            call(visitor, procedure)
            samples.append((time.perf_counter() - started) * 1000)
            db.session.rollback()  # no identity-map reuse across samples
        results[name] = (statistics.median(samples), percentile(samples, 0.99))
    return results


def run(kind: str, sizes: list[int], rankings: int) -> list[dict]:
    url, cleanup = scratch_database(kind)
    rows = []
    try:
        app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
        with app.app_context():
            upgrade()
            seed_demo_catalog()
            catalog: dict[int, list[int]] = {}
            for pid, cid in db.session.execute(
                select(Procedure.id, Procedure.category_id)
            ):
                catalog.setdefault(cid, []).append(pid)
            engine = app.extensions["personalization"]
            loaded, next_visitor = 0, 0
            for size in sizes:
                started = time.perf_counter()
                next_visitor = add_interactions(size - loaded, next_visitor, catalog)
                loaded = size
                load_seconds = time.perf_counter() - started
                started = time.perf_counter()
                engine.refresh_statistics()
                refresh_seconds = time.perf_counter() - started
                rng = random.Random(size)
                visitors = [
                    f"{rng.randrange(next_visitor):032x}" for _ in range(rankings)
                ]
                all_procedures = [p for ps in catalog.values() for p in ps]
                procedures = [rng.choice(all_procedures) for _ in range(rankings)]
                time_rankings(engine, visitors[:20], procedures[:20])  # warm caches
                timings = time_rankings(engine, visitors, procedures)
                print(
                    f"{kind} {size:>9,} rows: loaded in {load_seconds:.1f}s, "
                    f"refresh {refresh_seconds:.1f}s",
                    flush=True,
                )
                for name, (p50, p99) in timings.items():
                    print(f"    {name:<24} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms")
                    rows.append(
                        {
                            "database": kind,
                            "size": size,
                            "ranking": name,
                            "p50": p50,
                            "p99": p99,
                            "refresh": refresh_seconds,
                        }
                    )
            db.session.remove()
            db.engine.dispose()
    finally:
        cleanup()
    return rows


def markdown(rows: list[dict], sizes: list[int], rankings: int) -> str:
    """The results as a table: absolute p50/p99 and ratios to the smallest log."""
    baseline = {(r["database"], r["ranking"]): r for r in rows if r["size"] == sizes[0]}
    lines = [
        f"Command: `.venv/bin/python bench/ranking_latency.py` ({rankings} rankings of "
        "random visitors with history per cell, after a warm-up; synthetic visitors "
        f"of {EVENTS_PER_VISITOR} interactions favouring one or two categories).",
        f"Ratio = p50 at this log size / p50 at {sizes[0]:,} rows, same run, same "
        "database. Flat cost means ratios near 1.0.",
        "",
        "| database | ranking | "
        + " | ".join(f"{s:,} rows p50 / p99 ms" for s in sizes)
        + " | "
        + " | ".join(f"ratio {s:,}" for s in sizes[1:])
        + " |",
        "|---|---|" + "---|" * (2 * len(sizes) - 1),
    ]
    by_key = {(r["database"], r["ranking"], r["size"]): r for r in rows}
    for database, ranking in baseline:
        cells = [
            f"{by_key[(database, ranking, s)]['p50']:.2f} / "
            f"{by_key[(database, ranking, s)]['p99']:.2f}"
            for s in sizes
        ]
        first = baseline[(database, ranking)]["p50"]
        ratios = [
            f"{by_key[(database, ranking, s)]['p50'] / first:.2f}" for s in sizes[1:]
        ]
        lines.append(f"| {database} | {ranking} | " + " | ".join(cells + ratios) + " |")
    lines += [
        "",
        "`flask personalization refresh` (a full rebuild; rankings never need it, "
        "since the aggregator folds every interaction into the tables) took: "
        + "; ".join(
            f"{database} {r['size']:,} rows {r['refresh']:.1f}s"
            for database in dict.fromkeys(r["database"] for r in rows)
            for r in rows
            if r["database"] == database and r["ranking"] == "categories"
        )
        + ".",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000,10000000")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--rankings", type=int, default=300)
    parser.add_argument("--write", type=Path, help="update this BENCHMARKS.md")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for kind in args.databases.split(","):
        rows += run(kind, sizes, args.rankings)
    table = markdown(rows, sizes, args.rankings)
    print(table)
    if args.write:
        replace_section(args.write, "ranking-latency", table)


if __name__ == "__main__":
    main()
