"""This checkout against another git revision, in the same run:

- throughput of the personalized home page, a procedure page and tracking
  batches, each served by gunicorn (2 workers, as each tree configures it) in turn, on
  one database, with wrk (16 connections, 127.0.0.1 only);
- CPU time per page request in process (bench/request_cpu.py), and the
  aggregator's per tracked batch of 10 clicks (bench/aggregation_cpu.py);
- with --instructions, instructions per page request counted by valgrind: the
  one figure this noisy machine does not move.

The database grows as it is measured (page views, tracked clicks), so rounds
alternate which tree goes first (ABBA) and the clicks come from 100 visitors other
than the pages'; the report is the median ratio (this checkout / the baseline).
For changes that keep the schema (refactors, speed work): both trees serve the
same migrated, seeded database.

    .venv/bin/python bench/compare_revisions.py --baseline REV [--rounds 4]
        [--seconds 10] [--databases sqlite,postgresql] [--instructions]
        [--write BENCHMARKS.md]
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
        script = tracking_script(server.base, procedures)
        tracking = wrk(
            server.base + "/personalization/track-interaction", seconds, script
        )
    finally:
        server.stop()
    return {
        "home page req/s": home["rps"],
        "procedure page req/s": page["rps"],
        "tracking req/s (batches of 10)": tracking["rps"],
    }


def bench_script(script: str, tree: Path, *args: str) -> dict:
    """Run a bench/ script against one tree, in that tree's folder; its last line
    of output, JSON."""
    output = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), str(tree), *args],
        cwd=tree,
        env={**os.environ, "SECRET_KEY": SECRET},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def request_cpu(tree: Path, url: str) -> dict:
    """CPU ms per request of the two pages, in process, for one tree."""
    cookie = cookie_of(VISITOR).split("=", 1)[1]
    cpu = bench_script("request_cpu.py", tree, url, cookie, "/", "/procedures/botox")
    return {
        "home page CPU ms": cpu["/"],
        "procedure page CPU ms": cpu["/procedures/botox"],
    }


def aggregation_cpu(tree: Path, url: str) -> dict:
    """CPU ms the aggregator of one tree spends per batch of 10 clicks, in process
    (bench/aggregation_cpu.py)."""
    return bench_script("aggregation_cpu.py", tree, url)


def instructions(tree: Path, url: str, path: str, requests: int) -> int:
    """Instructions one process executes (valgrind's callgrind) to start the app
    and serve `requests` requests of `path`, in process."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                str(ROOT / "bench" / "request_cpu.py"),
                str(tree),
                url,
                cookie_of(VISITOR).split("=", 1)[1],
                path,
            ],
            cwd=tree,
            env={**os.environ, "SECRET_KEY": SECRET, "REQUESTS": str(requests)},
            capture_output=True,
            check=True,
        )
        summary = next(
            line for line in out.read_text().splitlines() if line.startswith("summary:")
        )
    return int(summary.split()[1])


def instructions_per_request(tree: Path, url: str, path: str) -> float:
    """Instructions per request: two runs that differ only in how many requests
    they serve, so start-up cancels out. Deterministic, whatever else runs."""
    few, many = 10, 60
    return (
        instructions(tree, url, path, many) - instructions(tree, url, path, few)
    ) / (many - few)


def compare_instructions(baseline: Path) -> dict:
    """Instructions per page request of both trees, on SQLite."""
    url, cleanup = scratch_database("sqlite")
    try:
        prepare(url)
        report = {"database": "sqlite", "cases": {}}
        for label, path in (
            ("home page", "/"),
            ("procedure page", "/procedures/botox"),
        ):
            old = instructions_per_request(baseline, url, path)
            new = instructions_per_request(ROOT, url, path)
            report["cases"][f"{label} instructions (M)"] = {
                "baseline": old / 1e6,
                "this_checkout": new / 1e6,
                "ratio": new / old,
            }
        print(json.dumps(report), flush=True)
        return report
    finally:
        cleanup()


def compare(kind: str, baseline: Path, rounds: int, seconds: int) -> dict:
    url, cleanup = scratch_database(kind)
    try:
        procedures = prepare(url)
        env = {
            "DATABASE_URL": url,
            "SECRET_KEY": SECRET,
            "TRACKING_RATE_LIMIT": "100000000 per minute",
            "TRACKING_RATE_LIMIT_PER_ADDRESS": "100000000 per minute",
        }
        trees = {"baseline": baseline, "this checkout": ROOT}
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for round_number in range(rounds):
            order = list(trees) if round_number % 2 == 0 else list(reversed(trees))
            for name in order:
                run = measure(trees[name], env, seconds, procedures)
                cpu = request_cpu(trees[name], url) | aggregation_cpu(trees[name], url)
                runs[name].append(run | cpu)
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
                "baseline": statistics.median(r[case] for r in runs["baseline"]),
                "this_checkout": statistics.median(
                    r[case] for r in runs["this checkout"]
                ),
                "ratio": statistics.median(ratios),
                "ratios": ratios,
            }
        print(json.dumps(report), flush=True)
        return report
    finally:
        cleanup()


def figure(value: float) -> str:
    """A measured figure: req/s to a tenth, sub-millisecond costs to a hundredth."""
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def markdown(
    reports: list[dict], revision: str, rounds: int, seconds: int, instructions: bool
) -> str:
    flag = " --instructions" if instructions else ""
    lines = [
        f"Command: `.venv/bin/python bench/compare_revisions.py --baseline {revision} "
        f"--rounds {rounds} --seconds {seconds}{flag} --write BENCHMARKS.md` "
        f"(gunicorn, 2 workers; wrk -t2 -c16 -d{seconds}s; the two trees "
        f"served in turn, {rounds} rounds, which goes first alternating). Ratio: "
        "this checkout's figure over the baseline's, median of the rounds' ratios "
        "(req/s: higher is better).",
        "",
        "CPU ms rows: CPU time per request in process (Flask's test client, least "
        "of 5 runs of 200), and the aggregator's per batch of 10 clicks (in "
        "process, least of 3 drains of 1,000 batches); instructions rows "
        "(`--instructions`): instructions per request counted by valgrind's "
        "callgrind (60 requests minus 10, in process), which no other load on the "
        "machine changes. For both, the ratio is this checkout's cost over the "
        "baseline's (lower is better).",
        "",
        "| database | case | baseline | this checkout | ratio |",
        "|---|---|---|---|---|",
    ]
    for report in reports:
        for case, row in report["cases"].items():
            lines.append(
                f"| {report['database']} | {case} | {figure(row['baseline'])} | "
                f"{figure(row['this_checkout'])} | {row['ratio']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="a git revision")
    parser.add_argument("--rounds", type=int, default=4, help="even: ABBA order")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count instructions per page request under valgrind (slow)",
    )
    parser.add_argument("--section", default="revision-comparison")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    baseline = worktree(args.baseline)
    try:
        reports = [
            compare(kind, baseline, args.rounds, args.seconds)
            for kind in args.databases.split(",")
        ]
        if args.instructions:
            reports.append(compare_instructions(baseline))
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(baseline)],
            cwd=ROOT,
            check=False,
        )
    text = markdown(
        reports, args.baseline, args.rounds, args.seconds, args.instructions
    )
    print(text)
    if args.write:
        replace_section(args.write, args.section, text)


if __name__ == "__main__":
    main()
