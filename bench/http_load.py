"""HTTP benchmarks under gunicorn as `make serve` runs it (gunicorn.conf.py) with 2
workers, and wrk (16 connections, 127.0.0.1 only, bounded in time), on SQLite and
PostgreSQL, each against a baseline in the same run:

- page cost of personalization: the home page for a visitor with history, versus
  the same page with PERSONALIZATION_ENABLED=false;
- tracking ingest: events/s through /personalization/track-interaction in batches
  of 10, versus a bare Flask endpoint inserting the same rows;
- memory: peak RSS of a worker after 100k+ mixed requests (many new visitors: the
  per-process caches must stay bounded).

Each ratio's two sides run ROUNDS times, taking turns, and their medians are
compared: runs of one commit vary by 0.1 on this machine.

    .venv/bin/python bench/http_load.py [--seconds 10] [--rounds 3]
        [--databases sqlite,postgresql] [--measures pages,tracking,memory]
        [--set NAME=VALUE ...] [--write BENCHMARKS.md]
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SECRET_KEY", "benchmark-only")

from flask_migrate import upgrade  # noqa: E402
from itsdangerous import URLSafeSerializer  # noqa: E402
from sqlalchemy import create_engine, select, text  # noqa: E402
from sqlalchemy.exc import DBAPIError  # noqa: E402

from app import create_app  # noqa: E402
from bench.ranking_latency import add_interactions, scratch_database  # noqa: E402
from bench.report import replace_section  # noqa: E402
from config import normalize_database_url  # noqa: E402
from demo_catalog import seed_demo_catalog  # noqa: E402
from models import Procedure, db  # noqa: E402
from personalization.events import Interaction, ItemKey  # noqa: E402

SECRET = "benchmark-only"
VISITOR = "a1" * 16
CONNECTIONS = 16
MIXED_REQUESTS = 100_000
# Each ratio's measure and baseline run this many times, alternately, after a
# warm-up run of each; the medians are compared.
ROUNDS = 3
WARM_UP_SECONDS = 2
MEASURES = ("pages", "tracking", "memory")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare(url: str) -> list[int]:
    """Migrate, seed, add 10k background interactions and the visitor's history."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
    with app.app_context():
        upgrade()
        seed_demo_catalog()
        catalog: dict[int, list[int]] = {}
        for pid, cid in db.session.execute(select(Procedure.id, Procedure.category_id)):
            catalog.setdefault(cid, []).append(pid)
        add_interactions(10_000, 1_000_000, catalog)
        engine = app.extensions["personalization"]
        engine.refresh_statistics()
        procedures = sorted(p for ps in catalog.values() for p in ps)
        engine.record_interactions(
            VISITOR,
            "bench",
            [Interaction("click", ItemKey("procedure", pid)) for pid in procedures[:6]],
        )
        db.session.remove()
        db.engine.dispose()
    return procedures


class Server:
    """gunicorn on a free port with the given environment; stopped on exit."""

    def __init__(self, command: list[str], env: dict, cwd: Path = ROOT):
        self.port = free_port()
        self.process = subprocess.Popen(
            [*command, "--bind", f"127.0.0.1:{self.port}"],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=1)
                return
            except Exception:
                time.sleep(0.2)

    def worker_peak_rss_mb(self) -> float:
        """Largest VmHWM among the master's worker processes."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        peaks = []
        for pid in children.read_text().split():
            status = Path(f"/proc/{pid}/status").read_text()
            peaks.append(int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024)
        return max(peaks)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


def gunicorn(module: str = "app:app") -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--workers", "2", module]


def wrk(url: str, seconds: int, script: str | None = None, headers=()) -> dict:
    """Run wrk; return requests/s, p50 and p99 in ms, and the request count."""
    command = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    for header in headers:
        command += ["-H", header]
    if script:
        command += ["-s", script]
    output = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 60
    ).stdout

    def latency(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", output).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50": latency("50%"),
        "p99": latency("99%"),
        "requests": int(re.search(r"(\d+) requests in", output).group(1)),
        "errors": int(non_2xx.group(1)) if non_2xx else 0,
    }


def post_script(path: str, body: str, headers: dict, cookies=()) -> str:
    """A wrk Lua script that POSTs the same JSON body; with `cookies`, each
    request carries the next of them, in turn."""
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body)}"]
    lines += [
        f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()
    ]
    if cookies:
        lines += [
            "cookies = {" + ", ".join(json.dumps(c) for c in cookies) + "}",
            "counter = 0",
            "request = function()",
            "  counter = counter + 1",
            '  wrk.headers["Cookie"] = cookies[(counter % #cookies) + 1]',
            "  return wrk.format()",
            "end",
        ]
    handle = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    handle.write("\n".join(lines) + "\n")
    handle.close()
    return handle.name


def mixed_script(procedures: list[int]) -> str:
    paths = [
        "/",
        "/procedures/botox",
        "/search?q=laser",
        "/categories/injectables",
        "/personalization/recommendations/doctors",
        "/doctors",
        "/privacy",
    ]
    handle = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    handle.write(
        "local paths = {" + ", ".join(json.dumps(p) for p in paths) + "}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i + 1\n"
        "  return wrk.format('GET', paths[(i % #paths) + 1])\n"
        "end\n"
    )
    handle.close()
    return handle.name


def browser_cookies(base: str, cookie: str) -> str:
    """The visitor cookie and the session cookie a first page sets with it, as
    a browser sends them on its next pages."""
    request = urllib.request.Request(base + "/", headers={"Cookie": cookie})
    with urllib.request.urlopen(request) as response:
        sessions = [
            c.split(";")[0]
            for c in response.headers.get_all("Set-Cookie") or []
            if c.startswith("session=")
        ]
    return "; ".join([cookie, *sessions])


def csrf_session(base: str, cookie: str) -> tuple[str, str]:
    """A page's CSRF token and the session cookie it belongs to."""
    request = urllib.request.Request(base + "/privacy", headers={"Cookie": cookie})
    with urllib.request.urlopen(request) as response:
        html = response.read().decode()
        session = next(
            c.split(";")[0]
            for c in response.headers.get_all("Set-Cookie")
            if c.startswith("session=")
        )
    token = re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)
    return token, session


def click_batch(procedures: list[int]) -> dict:
    """A tracker batch: clicks on ten procedures."""
    return {
        "events": [
            {"interaction_type": "click", "target_type": "procedure", "target_id": p}
            for p in procedures[:10]
        ]
    }


TRACK_PATH = "/personalization/track-interaction"
# Tracking load comes from this many visitors in turn, as a site's does.
TRACKING_VISITORS = 100


def tracking_script(base: str, procedures: list[int]) -> str:
    """A wrk script posting click batches from TRACKING_VISITORS visitors in turn.
    They share one session (and so one CSRF token); each has its own cookie."""
    serializer = URLSafeSerializer(SECRET, salt="visitor-id")
    cookies = [
        "antidote_visitor=" + serializer.dumps(f"{i:032x}")
        for i in range(1, TRACKING_VISITORS + 1)
    ]
    token, session = csrf_session(base, cookies[0])
    return post_script(
        TRACK_PATH,
        json.dumps(click_batch(procedures)),
        {"Content-Type": "application/json", "X-CSRFToken": token},
        [f"{session}; {cookie}" for cookie in cookies],
    )


def catch_up(url: str, limit: float = 60.0) -> dict | None:
    """Right after a load: the rows still waiting for the aggregator, and the
    seconds until the server's aggregators have folded them all in."""
    engine = create_engine(normalize_database_url(url))
    count = text("SELECT count(*) FROM pending_interactions")
    try:
        with engine.connect() as connection:
            waiting = connection.scalar(count)
    except DBAPIError:  # a revision that aggregates in the request (no table)
        engine.dispose()
        return None
    try:
        started = time.monotonic()
        left = waiting
        while left and time.monotonic() - started < limit:
            time.sleep(0.05)
            with engine.connect() as connection:
                left = connection.scalar(count)
        return {"waiting": waiting, "seconds": time.monotonic() - started, "left": left}
    finally:
        engine.dispose()


def median_run(runs: list[dict]) -> dict:
    """The run with the median requests/s (the upper middle of an even count)."""
    return sorted(runs, key=lambda run: run["rps"])[len(runs) // 2]


def alternate(measure, baseline, seconds: int, rounds: int, after_measure=None):
    """Run wrk on a measure and its baseline in turn, `rounds` times each, after
    a warm-up of each; the median run of each. Alternating spreads this
    machine's drift over both sides instead of onto one. `after_measure` runs
    after each measured round (and its result is kept), so that, say, the
    aggregator's catch-up never overlaps the baseline's run."""
    measure(WARM_UP_SECONDS)
    baseline(WARM_UP_SECONDS)
    measured, based, after = [], [], []
    for _ in range(rounds):
        measured.append(measure(seconds))
        if after_measure:
            after.append(after_measure())
        based.append(baseline(seconds))
    return median_run(measured), median_run(based), measured, based, after


def run(
    kind: str,
    seconds: int,
    rounds: int,
    mixed_requests: int = MIXED_REQUESTS,
    measures: tuple[str, ...] = MEASURES,
    settings: dict | None = None,
) -> dict:
    """The measures asked for on a fresh database of `kind`; `settings` are
    environment variables for the site's servers (never the baselines')."""
    url, cleanup = scratch_database(kind)
    results = {"database": kind, "rounds": {}}
    try:
        procedures = prepare(url)
        env = {
            "DATABASE_URL": url,
            "SECRET_KEY": SECRET,
            "TRACKING_RATE_LIMIT": "100000000 per minute",
            "TRACKING_RATE_LIMIT_PER_ADDRESS": "100000000 per minute",
            # The visitor sees personal lists (not the A/B holdout's popular ones).
            "EXPERIMENT_CONTROL_SHARE": "0",
        }
        site = {**env, **(settings or {})}
        if "pages" in measures:
            add_results(results, compare_pages(env, site, seconds, rounds))
        if "tracking" in measures:
            add_results(
                results, compare_tracking(url, env, site, procedures, seconds, rounds)
            )
        if "memory" in measures:
            add_results(
                results, mixed_memory(site, procedures, seconds, mixed_requests)
            )
        print(json.dumps(results), flush=True)
        return results
    finally:
        cleanup()


def add_results(results: dict, found: dict) -> None:
    """Add one comparison's results, and its rounds to those of the others."""
    results["rounds"].update(found.pop("rounds", {}))
    results.update(found)


def compare_pages(env: dict, site: dict, seconds: int, rounds: int) -> dict:
    """The visitor's home page, personalized, against the same page with
    PERSONALIZATION_ENABLED=false."""
    cookie = "antidote_visitor=" + URLSafeSerializer(SECRET, salt="visitor-id").dumps(
        VISITOR
    )
    personalized = Server(gunicorn(), {**site, "PERSONALIZATION_ENABLED": "true"})
    plain = Server(gunicorn(), {**env, "PERSONALIZATION_ENABLED": "false"})
    try:
        # Like a browser, wrk sends back the session cookie of the visitor's
        # first page (which holds their arm of the holdout).
        pages = {
            server: [f"Cookie: {browser_cookies(server.base, cookie)}"]
            for server in (personalized, plain)
        }
        page, base, pages_runs, plain_runs, _ = alternate(
            lambda s: wrk(personalized.base + "/", s, headers=pages[personalized]),
            lambda s: wrk(plain.base + "/", s, headers=pages[plain]),
            seconds,
            rounds,
        )
    finally:
        personalized.stop()
        plain.stop()
    return {
        "personalized": page,
        "plain": base,
        "rounds": {
            "personalized": [run["rps"] for run in pages_runs],
            "plain": [run["rps"] for run in plain_runs],
        },
    }


def compare_tracking(
    url: str, env: dict, site: dict, procedures: list[int], seconds: int, rounds: int
) -> dict:
    """Tracking batches against the bare endpoint; the aggregator's backlog
    after each round."""
    server = Server(gunicorn(), site)
    bare = Server(gunicorn("bench.bare_ingest_app:app"), env)
    try:
        script = tracking_script(server.base, procedures)
        bare_script = post_script(
            "/ingest",
            json.dumps(click_batch(procedures)),
            {"Content-Type": "application/json"},
        )
        tracked, ceiling, tracking_runs, bare_runs, backlogs = alternate(
            lambda s: wrk(server.base + TRACK_PATH, s, script),
            lambda s: wrk(bare.base + "/ingest", s, bare_script),
            seconds,
            rounds,
            after_measure=lambda: catch_up(url),
        )
    finally:
        bare.stop()
        server.stop()
    results = {
        "tracking": tracked,
        "bare": ceiling,
        "rounds": {
            "tracking": [run["rps"] for run in tracking_runs],
            "bare": [run["rps"] for run in bare_runs],
        },
    }
    if all(backlogs):
        results["backlog"] = max(backlogs, key=lambda b: b["seconds"])
    return results


def mixed_memory(
    site: dict, procedures: list[int], seconds: int, mixed_requests: int
) -> dict:
    """Mixed pages until at least `mixed_requests`, then the workers' peak RSS."""
    server = Server(gunicorn(), site)
    try:
        script = mixed_script(procedures)
        runs = [wrk(server.base, seconds, script)]
        while sum(run["requests"] for run in runs) < mixed_requests:
            runs.append(wrk(server.base, seconds, script))
        return {
            "mixed": {
                "requests": sum(run["requests"] for run in runs),
                "errors": sum(run["errors"] for run in runs),
            },
            "peak_rss_mb": server.worker_peak_rss_mb(),
        }
    finally:
        server.stop()


def ratios(results: dict) -> str:
    """One line per comparison that ran (for --measures runs)."""
    lines = []
    for measure, baseline in (("personalized", "plain"), ("tracking", "bare")):
        if measure in results:
            rounds = results["rounds"]
            lines.append(
                f"{results['database']} {measure} / {baseline}: "
                f"{results[measure]['rps'] / results[baseline]['rps']:.2f} "
                f"(req/s of each round: {rounds[measure]} / {rounds[baseline]})"
            )
    return "\n".join(lines)


def markdown(results: list[dict], seconds: int, rounds: int) -> str:
    lines = [
        "Command: `.venv/bin/python bench/http_load.py` (gunicorn.conf.py, 2 "
        f"workers; wrk -t2 -c{CONNECTIONS} -d{seconds}s on 127.0.0.1; load "
        "generator on the same 2 cores). Each ratio compares medians: the measure "
        f"and its baseline ran {rounds} times each, taking turns, after a "
        f"{WARM_UP_SECONDS} s warm-up of each (req/s of every round below the "
        "table). Visitor with history: 6 clicks, 10k "
        "background interactions; wrk sends their visitor and session cookies, "
        "as a browser does; every personalized page records its view and its "
        "impressions.",
        "",
        "| database | measure | value | baseline (same run) | ratio |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        name, page, plain = r["database"], r["personalized"], r["plain"]
        tracking, bare = r["tracking"]["rps"] * 10, r["bare"]["rps"] * 10
        errors = sum(r[k]["errors"] for k in ("personalized", "plain", "tracking"))
        rows = [
            (
                "home page req/s, personalized vs PERSONALIZATION_ENABLED=false",
                f"{page['rps']:,.0f}",
                f"{plain['rps']:,.0f}",
                f"{page['rps'] / plain['rps']:.2f}",
            ),
            (
                "home page p50 / p99 ms",
                f"{page['p50']:.1f} / {page['p99']:.1f}",
                f"{plain['p50']:.1f} / {plain['p99']:.1f}",
                f"{page['p99'] / plain['p99']:.2f} (p99)",
            ),
            (
                "tracking events/s (batches of 10) vs a bare INSERT endpoint",
                f"{tracking:,.0f}",
                f"{bare:,.0f}",
                f"{tracking / bare:.2f}",
            ),
            (
                "aggregation backlog when a tracking round stopped (the slowest "
                "round), and the seconds until it was all in the statistics",
                f"{r['backlog']['waiting']:,} rows, {r['backlog']['seconds']:.1f} s"
                if r.get("backlog")
                else "none (aggregated in the request)",
                "–",
                "–",
            ),
            (
                f"worker peak RSS after {r['mixed']['requests']:,} mixed requests",
                f"{r['peak_rss_mb']:.0f} MB",
                "–",
                "–",
            ),
            ("non-2xx responses", str(errors + r["mixed"]["errors"]), "–", "–"),
        ]
        lines += [f"| {name} | " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    for r in results:
        rounds = ", ".join(
            f"{label} " + " / ".join(f"{rps:,.0f}" for rps in values)
            for label, values in r["rounds"].items()
        )
        lines.append(f"- {r['database']}, req/s of each round: {rounds}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--mixed-requests", type=int, default=MIXED_REQUESTS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument(
        "--measures",
        default=",".join(MEASURES),
        help="some of pages,tracking,memory; only all three make the table",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the site's servers, e.g. AGGREGATION_INTERVAL_SECONDS=60",
    )
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    measures = tuple(args.measures.split(","))
    if set(measures) - set(MEASURES):
        sys.exit(f"--measures takes some of {','.join(MEASURES)}")
    settings = dict(item.split("=", 1) for item in args.set)
    whole = set(measures) == set(MEASURES) and not settings
    if args.write and not whole:
        sys.exit("--write takes every measure and no --set (the site as shipped)")
    results = [
        run(kind, args.seconds, args.rounds, args.mixed_requests, measures, settings)
        for kind in args.databases.split(",")
    ]
    if not whole:
        print("\n".join(ratios(result) for result in results))
        return
    table = markdown(results, args.seconds, args.rounds)
    print(table)
    if args.write:
        replace_section(args.write, "http-load", table)


if __name__ == "__main__":
    main()
