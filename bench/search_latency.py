"""Search latency: p50/p90 of `search_catalog` over the relevance queries of
tests/test_search.py, on SQLite and PostgreSQL, against baselines measured in the
same run: the LIKE search it replaced (e025cc4) and, on PostgreSQL, a pg_trgm
similarity search (the database's own fuzzy matching). Each also gets its share of
relevance queries answered with the expected first result.

    .venv/bin/python bench/search_latency.py [--rounds 20]
        [--databases sqlite,postgresql] [--write BENCHMARKS.md]
"""

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("SECRET_KEY", "benchmark-only")

from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import String, and_, bindparam, func, or_, select, text  # noqa: E402
from test_search import RELEVANCE, TopRated  # noqa: E402

from app import create_app  # noqa: E402
from bench.ranking_latency import percentile, scratch_database  # noqa: E402
from bench.report import replace_section  # noqa: E402
from demo_catalog import seed_demo_catalog  # noqa: E402
from models import Category, Doctor, Package, Procedure, db  # noqa: E402
from search import (  # noqa: E402
    SearchResults,
    build_index,
    catalog_signature,
    normalize_query,
    result_categories,
    search_catalog,
)

SECTION = "search-latency"
SEARCH_PY = "rapidfuzz index (search.py)"
MATCHING_ONLY = "rapidfuzz matching alone (result_categories)"
TRIGRAMS = "pg_trgm similarity on names"
HEADING = """## Search latency

`search.py` matches queries in memory (rapidfuzz over an index of the ~130 catalog
items, cached per app and rebuilt when the catalog changes), then loads what it found
by id, with the named treatment's doctors top rated. The alternatives, measured in
the same run over the same queries: the LIKE search it replaced, and PostgreSQL's own
trigram similarity (`pg_trgm`, with trigram indexes, in the benchmark's throwaway
database only). "Right first" counts the relevance queries of `tests/test_search.py`
whose expected item comes first in its group (misspellings, lay terms, "treatment
city", names, packages, categories). Like for like with `pg_trgm`, which finds and
ranks names and loads them, is the matching alone (`result_categories`: the
signature round trip and the in-memory matching); the rest of `search.py`'s time is
loading rows by id and the doctors, which `pg_trgm` would need too.
"""


# The baseline: search_catalog as it was at e025cc4 (catalog.py), LIKE on every word.

MAX_SEARCH_TERMS = 8
RESULTS_PER_TYPE = 20
SEARCHABLE = {
    "categories": (Category, [Category.name, Category.description]),
    "procedures": (Procedure, [Procedure.name, Procedure.short_description]),
    "doctors": (Doctor, [Doctor.name, Doctor.title, Doctor.city, Doctor.bio]),
    "packages": (Package, [Package.name, Package.description]),
}


def like_pattern(term: str) -> str:
    """Make a LIKE pattern that matches the term literally, wildcards included."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def like_search(raw_query: str | None) -> SearchResults:
    """Find items whose name or description contains every word of the query."""
    query, truncated = normalize_query(raw_query)
    results = SearchResults(query=query, truncated=truncated)
    terms = query.split()[:MAX_SEARCH_TERMS]
    if not terms:
        return results
    for kind, (model, columns) in SEARCHABLE.items():
        matches_every_term = and_(
            *(
                or_(
                    *(
                        column.ilike(like_pattern(term), escape="\\")
                        for column in columns
                    )
                )
                for term in terms
            )
        )
        name_matches = model.name.ilike(like_pattern(query), escape="\\")
        statement = (
            select(model)
            .where(matches_every_term)
            .order_by(name_matches.desc(), model.name)
            .limit(RESULTS_PER_TYPE)
        )
        setattr(results, kind, list(db.session.scalars(statement)))
    return results


# The database's fuzzy matching: pg_trgm on names, with trigram indexes.


def enable_trigrams() -> None:
    """pg_trgm and a trigram index on each name, in the bench's own database."""
    db.session.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    for model in SEARCHABLE.values():
        table = model[0].__tablename__
        db.session.execute(
            text(
                f"CREATE INDEX IF NOT EXISTS ix_{table}_name_trgm "
                f"ON {table} USING gin (name gin_trgm_ops)"
            )
        )
    db.session.commit()


@functools.cache
def trigram_statement(kind: str):
    """Items whose name is similar to the query (or has a part similar to it),
    most similar first: `name % q OR q <% name`, which the indexes serve. Built
    once, as search.py builds its statements, so both are measured alike."""
    model = SEARCHABLE[kind][0]
    query = bindparam("q", type_=String)
    score = func.greatest(
        func.similarity(model.name, query), func.word_similarity(query, model.name)
    )
    return (
        select(model)
        .where(or_(model.name.op("%")(query), query.op("<%")(model.name)))
        .order_by(score.desc(), model.name)
        .limit(RESULTS_PER_TYPE)
    )


def trigram_search(raw_query: str | None) -> SearchResults:
    """Each kind's items by trigram similarity of their names to the query."""
    query, truncated = normalize_query(raw_query)
    results = SearchResults(query=query, truncated=truncated)
    if not query:
        return results
    for kind in SEARCHABLE:
        found = db.session.scalars(trigram_statement(kind), {"q": query})
        setattr(results, kind, list(found))
    return results


# Measuring


def right_first(search, expected: dict) -> int:
    """How many relevance queries find their expected item first in its group."""
    right = 0
    for query, group, _ in RELEVANCE:
        items = getattr(search(query), group)
        right += bool(items) and items[0].display_name == expected[query]
        db.session.rollback()
    return right


def timings(search, rounds: int) -> list[float]:
    """Milliseconds per call, every relevance query `rounds` times."""
    samples = []
    for _ in range(rounds):
        for query, _, _ in RELEVANCE:
            started = time.perf_counter()
            search(query)
            samples.append((time.perf_counter() - started) * 1000)
            db.session.rollback()  # no identity-map reuse across samples
    return samples


def run(kind: str, rounds: int) -> list[dict]:
    url, cleanup = scratch_database(kind)
    rows = []
    try:
        app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
        with app.app_context():
            upgrade()
            seed_demo_catalog()
            expected = {
                query: answer.resolve() if isinstance(answer, TopRated) else answer
                for query, _, answer in RELEVANCE
            }
            builds = []
            for _ in range(5):
                started = time.perf_counter()
                build_index(catalog_signature())
                builds.append((time.perf_counter() - started) * 1000)
                db.session.rollback()
            build_ms = statistics.median(builds)
            searches = {
                "LIKE on every word (e025cc4)": like_search,
                SEARCH_PY: search_catalog,
                MATCHING_ONLY: result_categories,
            }
            if kind == "postgresql":
                enable_trigrams()
                searches[TRIGRAMS] = trigram_search
            for search in searches.values():
                timings(search, 1)  # warm up
            # Interleaved rounds, so a noisy moment hits every search alike.
            samples = {name: [] for name in searches}
            for _ in range(rounds):
                for name, search in searches.items():
                    samples[name] += timings(search, 1)
            for name, search in searches.items():
                rows.append(
                    {
                        "database": kind,
                        "search": name,
                        "p50": percentile(samples[name], 0.5),
                        "p90": percentile(samples[name], 0.9),
                        "right": None
                        if name == MATCHING_ONLY
                        else right_first(search, expected),
                        "build_ms": build_ms,
                    }
                )
                print(
                    f"{kind:<10} {name:<44} p50 {rows[-1]['p50']:6.2f} ms  "
                    f"p90 {rows[-1]['p90']:6.2f} ms  right first "
                    f"{rows[-1]['right']}",
                    flush=True,
                )
            db.session.remove()
            db.engine.dispose()
    finally:
        cleanup()
    return rows


def markdown(rows: list[dict], rounds: int, command: str) -> str:
    """The results as a table: p50/p90 and ratios to the LIKE baseline."""
    lines = [
        f"Command: `{command}` ({len(RELEVANCE)} relevance queries x {rounds} "
        "rounds per search, interleaved, after a warm-up; in process, each call "
        "with a fresh session). Ratio = p50 / the LIKE baseline's p50, same run, "
        "same database (below 1: faster).",
        "",
        "| database | search | p50 ms | p90 ms | ratio p50 | ratio p90 | right first |",
        "|---|---|---|---|---|---|---|",
    ]
    baseline = {r["database"]: r for r in rows if r["search"].startswith("LIKE")}
    for r in rows:
        base = baseline[r["database"]]
        lines.append(
            f"| {r['database']} | {r['search']} | {r['p50']:.2f} | {r['p90']:.2f} | "
            f"{r['p50'] / base['p50']:.2f} | {r['p90'] / base['p90']:.2f} | "
            + ("–" if r["right"] is None else f"{r['right']}/{len(RELEVANCE)}")
            + " |"
        )
    builds = "; ".join(
        f"{r['database']} {r['build_ms']:.1f} ms"
        for r in rows
        if r["search"] == SEARCH_PY
    )
    by_name = {(r["database"], r["search"]): r for r in rows}
    trigrams = by_name.get(("postgresql", TRIGRAMS))
    if trigrams:
        ratios = ", ".join(
            f"{name} {by_name[('postgresql', name)]['p50'] / trigrams['p50']:.2f}"
            for name in (SEARCH_PY, MATCHING_ONLY)
        )
        lines += ["", f"PostgreSQL, p50 / pg_trgm's p50: {ratios}."]
    lines += [
        "",
        f"Building the index (the first search after a catalog change): {builds}. "
        "Every search also runs one signature query (counts, highest ids, name "
        "lengths) to see whether the catalog changed.",
    ]
    return "\n".join(lines)


def write(path: Path, body: str) -> None:
    """Put the section in BENCHMARKS.md, under its heading at the end the first time."""
    existing = path.read_text() if path.exists() else ""
    if f"<!-- {SECTION}:start -->" not in existing:
        path.write_text(existing.rstrip() + "\n\n" + HEADING)
    replace_section(path, SECTION, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--write", type=Path, help="update this BENCHMARKS.md")
    args = parser.parse_args()
    command = ".venv/bin/python bench/search_latency.py " + " ".join(sys.argv[1:])
    rows = []
    for kind in args.databases.split(","):
        rows += run(kind, args.rounds)
    table = markdown(rows, args.rounds, command.strip())
    print(table)
    if args.write:
        write(args.write, table)


if __name__ == "__main__":
    main()
