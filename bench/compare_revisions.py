"""Throughput of this checkout against another git revision, in the same run: the
personalized home page, a procedure page and tracking batches, each served by
gunicorn (2 sync workers) from both trees in turn, on one database, with wrk
(16 connections, 127.0.0.1 only). The database grows as it is measured (page
views, tracked clicks), so rounds alternate which tree goes first (ABBA) and the
clicks come from another visitor than the pages'; the report is the median ratio
(this checkout / the baseline) of the rounds.

For changes that keep the schema (refactors, speed work): both trees serve the
same migrated, seeded database.

    .venv/bin/python bench/compare_revisions.py --baseline REV [--rounds 3]
        [--seconds 10] [--databases sqlite,postgresql] [--write BENCHMARKS.md]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SECRET_KEY", "benchmark-only")

from itsdangerous import URLSafeSerializer  # noqa: E402

from bench.http_load import (  # noqa: E402
    SECRET,
    VISITOR,
    Server,
    gunicorn,
    prepare,
    tracking_script,
    wrk,
)
from bench.ranking_latency import scratch_database  # noqa: E402
from bench.report import replace_section  # noqa: E402


def worktree(revision: str) -> Path:
    """A checkout of `revision` beside this one (removed by the caller)."""
    folder = Path(tempfile.mkdtemp(prefix="antidote-baseline-"))
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(folder), revision],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return folder


# Tracked clicks come from their own visitor, so the page visitor's history (which
# every page reads) does not grow with the tracking load.
TRACKING_VISITOR = "c" * 32


def cookie_of(visitor: str) -> str:
    serializer = URLSafeSerializer(SECRET, salt="visitor-id")
    return "antidote_visitor=" + serializer.dumps(visitor)


def measure(tree: Path, env: dict, seconds: int, procedures: list[int]) -> dict:
    """req/s of the three cases, served from one tree."""
    cookie = cookie_of(VISITOR)
    server = Server(gunicorn(), env, cwd=tree)
    try:
        home = wrk(server.base + "/", seconds, headers=[f"Cookie: {cookie}"])
        page = wrk(
            server.base + "/procedures/botox", seconds, headers=[f"Cookie: {cookie}"]
        )
        script = tracking_script(server.base, cookie_of(TRACKING_VISITOR), procedures)
        tracking = wrk(
            server.base + "/personalization/track-interaction", seconds, script
        )
    finally:
        server.stop()
    return {
        "home page": home["rps"],
        "procedure page": page["rps"],
        "tracking (batches of 10)": tracking["rps"],
    }


def compare(kind: str, baseline: Path, rounds: int, seconds: int) -> dict:
    url, cleanup = scratch_database(kind)
    try:
        procedures = prepare(url)
        env = {
            "DATABASE_URL": url,
            "SECRET_KEY": SECRET,
            "TRACKING_RATE_LIMIT": "100000000 per minute",
        }
        trees = {"baseline": baseline, "this checkout": ROOT}
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for round_number in range(rounds):
            order = list(trees) if round_number % 2 == 0 else list(reversed(trees))
            for name in order:
                runs[name].append(measure(trees[name], env, seconds, procedures))
        cases = list(runs["baseline"][0])
        report = {"database": kind, "cases": {}}
        for case in cases:
            ratios = [
                new[case] / old[case]
                for new, old in zip(
                    runs["this checkout"], runs["baseline"], strict=True
                )
            ]
            report["cases"][case] = {
                "baseline_rps": statistics.median(r[case] for r in runs["baseline"]),
                "rps": statistics.median(r[case] for r in runs["this checkout"]),
                "ratio": statistics.median(ratios),
                "ratios": ratios,
            }
        print(json.dumps(report), flush=True)
        return report
    finally:
        cleanup()


def markdown(reports: list[dict], revision: str, rounds: int, seconds: int) -> str:
    lines = [
        f"Command: `.venv/bin/python bench/compare_revisions.py --baseline {revision} "
        f"--rounds {rounds} --seconds {seconds}` (gunicorn, 2 sync workers; wrk -t2 "
        f"-c16 -d{seconds}s; the two trees served in turn, {rounds} rounds, which "
        "goes first alternating). Ratio: this checkout's req/s over the baseline's, "
        "median of the rounds' ratios.",
        "",
        "| database | case | baseline req/s | req/s | ratio |",
        "|---|---|---|---|---|",
    ]
    for report in reports:
        for case, row in report["cases"].items():
            lines.append(
                f"| {report['database']} | {case} | {row['baseline_rps']:.0f} | "
                f"{row['rps']:.0f} | {row['ratio']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="a git revision")
    parser.add_argument("--rounds", type=int, default=4, help="even: ABBA order")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--section", default="revision-comparison")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    baseline = worktree(args.baseline)
    try:
        reports = [
            compare(kind, baseline, args.rounds, args.seconds)
            for kind in args.databases.split(",")
        ]
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(baseline)],
            cwd=ROOT,
            check=False,
        )
    text = markdown(reports, args.baseline, args.rounds, args.seconds)
    print(text)
    if args.write:
        replace_section(args.write, args.section, text)


if __name__ == "__main__":
    main()
