"""What one procedure ranking costs once the visitor's profile is read, on the
public logs: the served ranking (item neighbours from memory) against the
co-visitation blend it replaced and against scoring EASE from memory, all on
the same replayed leave-last-out split, in the same run.

    .venv/bin/python bench/engine_latency.py [--datasets ml-100k,taobao]
        [--visitors 500] [--write BENCHMARKS.md]

Each figure is the median and mean over the test visitors (up to --visitors),
after one warm-up pass, with the ratio to the co-visitation blend's median.
"""

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("SECRET_KEY", "benchmark-only")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from bench.evaluate_public import WEIGHTS, load_movielens, load_taobao  # noqa: E402
from bench.references import Matrix, ease  # noqa: E402
from bench.report import replace_section  # noqa: E402
from config import tunables_from_environment  # noqa: E402
from personalization.evaluation import split_log  # noqa: E402
from personalization.events import ItemKey  # noqa: E402
from personalization.settings import Settings  # noqa: E402
from replay import replay_system  # noqa: E402

LOADERS = {"ml-100k": load_movielens, "taobao": load_taobao}
EASE_LAMBDA = 250


def timed(call, visitors) -> list[float]:
    """Milliseconds per call, one per visitor, after a warm-up pass."""
    for visitor in visitors:
        call(visitor)
    found = []
    for visitor in visitors:
        started = time.perf_counter()
        call(visitor)
        found.append((time.perf_counter() - started) * 1000)
    return found


def measure(name: str, visitors_wanted: int) -> dict[str, list[float]]:
    categories, items, events, relevant_from = LOADERS[name]()
    split = split_log(events, "leave-last-out", WEIGHTS, relevant_from)
    settings = Settings.from_config(tunables_from_environment())
    system = replay_system(categories, items, split, settings)
    visitors = sorted(split.test)[:visitors_wanted]
    recommenders = system.recommenders
    with system.reading():
        profiles = {visitor: system.profiles.load(visitor) for visitor in visitors}
        excluded = {
            visitor: [ItemKey("procedure", item) for item in split.exclude[visitor]]
            for visitor in visitors
        }

        def ranking(recommender):
            # A fresh memo each time: the blend keeps its scores in the profile
            # for the rest of a page, and each page reads a new profile.
            return lambda visitor: recommender.recommend(
                replace(profiles[visitor], memo={}),
                "procedure",
                10,
                excluded[visitor],
            )

        before = ranking(recommenders.blend)
        rows = {
            "profile read": timed(system.profiles.load, visitors),
            "co-visitation blend (before)": timed(before, visitors),
            "served ranking": timed(ranking(recommenders.served), visitors),
        }
    rank_ease = ease(Matrix(split.train, WEIGHTS), EASE_LAMBDA)
    rows["EASE scored from memory"] = timed(
        lambda visitor: rank_ease(visitor, split.exclude[visitor], 10), visitors
    )
    return rows


def markdown(results: dict[str, dict[str, list[float]]], visitors: int) -> str:
    lines = [
        "Command: `.venv/bin/python bench/engine_latency.py --write BENCHMARKS.md` "
        f"(leave-last-out split at the default settings, up to {visitors} test "
        "visitors, one procedure list of 10 with their training items excluded, "
        "after a warm-up pass; one BLAS thread). Ratios are to the co-visitation "
        "blend's median in the same run.",
        "",
        "| log | step | median ms | mean ms | median vs. blend |",
        "|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        baseline = statistics.median(rows["co-visitation blend (before)"])
        for step, times in rows.items():
            median = statistics.median(times)
            lines.append(
                f"| {name} | {step} | {median:.2f} | {statistics.fmean(times):.2f} "
                f"| {median / baseline:.2f}x |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="ml-100k,taobao")
    parser.add_argument("--visitors", type=int, default=500)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    results = {name: measure(name, args.visitors) for name in args.datasets.split(",")}
    table = markdown(results, args.visitors)
    print(table)
    if args.write:
        replace_section(args.write, "engine-latency", table)


if __name__ == "__main__":
    main()
