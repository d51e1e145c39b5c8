"""Throughput of this checkout against another git revision, in the same run: the
personalized home page, a procedure page and tracking batches, each served by
gunicorn (2 sync workers) from both trees in turn, on one database, with wrk
(16 connections, 127.0.0.1 only). Rounds alternate the trees so the machine's
drift hits both; the report is the median ratio (this checkout / the baseline).

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
    csrf_session,
    gunicorn,
    post_script,
    prepare,
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


def measure(tree: Path, env: dict, seconds: int, procedures: list[int]) -> dict:
    """req/s of the three cases, served from one tree."""
    cookie = "antidote_visitor=" + URLSafeSerializer(SECRET, salt="visitor-id").dumps(
        VISITOR
    )
    server = Server(gunicorn(), env, cwd=tree)
    try:
        home = wrk(server.base + "/", seconds, headers=[f"Cookie: {cookie}"])
        page = wrk(
            server.base + "/procedures/botox", seconds, headers=[f"Cookie: {cookie}"]
        )
        token, session = csrf_session(server.base, cookie)
        batch = {
            "events": [
                {
                    "interaction_type": "click",
                    "target_type": "procedure",
                    "target_id": p,
                }
                for p in procedures[:10]
            ]
        }
        script = post_script(
            "/personalization/track-interaction",
            json.dumps(batch),
            {
                "Content-Type": "application/json",
                "X-CSRFToken": token,
                "Cookie": f"{session}; {cookie}",
            },
        )
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
        runs: dict[str, list[dict]] = {"this checkout": [], "baseline": []}
        for _ in range(rounds):
            runs["baseline"].append(measure(baseline, env, seconds, procedures))
            runs["this checkout"].append(measure(ROOT, env, seconds, procedures))
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
        f"-c16 -d{seconds}s; the two trees served in turn, {rounds} rounds). Ratio: "
        "this checkout's req/s over the baseline's, median of the rounds' ratios.",
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
    parser.add_argument("--rounds", type=int, default=3)
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
