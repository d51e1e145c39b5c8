"""Offline evaluation on real public logs: MovieLens 100K and the Taobao
UserBehavior head (../shared/data), or any CSV log, with two reference points
measured in the same process on the same split: ALS (the `implicit` package) and
EASE (closed form in numpy).

    .venv/bin/python bench/evaluate_public.py [--datasets ml-100k,taobao]
        [--split temporal|leave-last-out] [--k 10] [--events FILE.csv] [--json]
        [--write BENCHMARKS.md]

Mappings (documented in BENCHMARKS.md):
- MovieLens: a movie is a procedure, its first genre its category; ratings become
  events: 5 bookmark (0.54), 4 click (0.3), 3 view (0.1), 2 hide (-0.15),
  1 downvote (-0.3). Relevant test items: rated 4 or 5.
- Taobao: an item is a procedure, its category_id its category; pv view (0.1),
  fav bookmark (0.54), cart form_submit (0.5), buy donate (0.9: the strongest
  commitment, a purchase). Relevant test items: any positive event.
- --events FILE.csv: header visitor_id,item_id,category_id,event_type,timestamp
  (epoch seconds; event types from the weight table).
"""

import argparse
import csv
import json
import os
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("SECRET_KEY", "benchmark-only")
# One BLAS thread: the machine has two cores and the timings compare per ranking.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from bench.report import replace_section  # noqa: E402
from config import tunables_from_environment  # noqa: E402
from personalization.evaluation import (  # noqa: E402
    format_table,
    score_rankings,
    split_log,
)
from personalization.events import (  # noqa: E402
    DEFAULT_INTERACTION_WEIGHTS,
    Interaction,
    ItemKey,
    VisitorInteraction,
)
from personalization.settings import Settings  # noqa: E402
from personalization_system import replay_system  # noqa: E402

DATA = Path(
    os.environ.get("SHARED_DATA_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "data"
)
RATING_EVENTS = {5: "bookmark", 4: "click", 3: "view", 2: "hide", 1: "downvote"}
TAOBAO_EVENTS = {
    "pv": "view",
    "fav": "bookmark",
    "cart": "form_submit",
    "buy": "donate",
}
# Taobao's window, 25 Nov - 3 Dec 2017 in UTC+8.
TAOBAO_START, TAOBAO_END = 1511539200, 1512316800
EASE_MAX_ITEMS = 5000


def logged(visitor: str, item: int, kind: str, when: datetime) -> VisitorInteraction:
    """One interaction of a public log, as the engine records it."""
    return VisitorInteraction(
        visitor, "evaluation", Interaction(kind, ItemKey("procedure", item), None, when)
    )


def load_movielens() -> tuple[list, list, list[VisitorInteraction], float]:
    folder = DATA / "ml-100k"
    genres = [
        line.split("|")
        for line in (folder / "u.genre").read_text(encoding="latin-1").splitlines()
        if line.strip()
    ]
    categories = [(int(gid) + 1, name) for name, gid in genres]
    items = []
    for line in (folder / "u.item").read_text(encoding="latin-1").splitlines():
        fields = line.split("|")
        flags = fields[-19:]
        first = next((i for i, flag in enumerate(flags) if flag == "1"), 0)
        items.append((int(fields[0]), first + 1))
    events = []
    for line in (folder / "u.data").read_text().splitlines():
        user, item, rating, stamp = line.split("\t")
        events.append(
            logged(
                f"u{user}",
                int(item),
                RATING_EVENTS[int(rating)],
                datetime.fromtimestamp(int(stamp), tz=UTC),
            )
        )
    return categories, items, events, 0.3


def load_taobao() -> tuple[list, list, list[VisitorInteraction], float]:
    path = DATA / "taobao-userbehavior-head" / "UserBehavior_head.csv"
    rows = [line.split(",") for line in path.read_text().splitlines() if line]
    last_user = rows[-1][0]  # the file is cut inside its last user: drop them
    item_category: dict[int, int] = {}
    events = []
    for fields in rows:
        if len(fields) != 5 or fields[0] == last_user:
            continue
        user, item, category, behaviour, stamp = fields
        if not TAOBAO_START <= int(stamp) < TAOBAO_END:
            continue
        item_category[int(item)] = int(category)
        events.append(
            logged(
                f"t{user}",
                int(item),
                TAOBAO_EVENTS[behaviour],
                datetime.fromtimestamp(int(stamp), tz=UTC),
            )
        )
    categories = [
        (cid, f"category {cid}") for cid in sorted(set(item_category.values()))
    ]
    return categories, sorted(item_category.items()), events, 0.0


def load_csv(path: Path) -> tuple[list, list, list[VisitorInteraction], float]:
    item_category: dict[int, int] = {}
    events = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            item_category[int(row["item_id"])] = int(row["category_id"])
            events.append(
                logged(
                    row["visitor_id"],
                    int(row["item_id"]),
                    row["event_type"],
                    datetime.fromtimestamp(float(row["timestamp"]), tz=UTC),
                )
            )
    categories = [
        (cid, f"category {cid}") for cid in sorted(set(item_category.values()))
    ]
    return categories, sorted(item_category.items()), events, 0.0


def categories_of(item_category: dict[int, int]) -> list[tuple[int, str]]:
    return [(cid, f"category {cid}") for cid in sorted(set(item_category.values()))]


# Reference points, on the same training events and test visitors


def interaction_matrix(train: list[VisitorInteraction], weights: dict[str, float]):
    """Users x items with summed positive weights; index maps both ways."""
    users = sorted({e.visitor_id for e in train})
    items = sorted({e.interaction.item.id for e in train})
    user_index = {u: i for i, u in enumerate(users)}
    item_index = {it: i for i, it in enumerate(items)}
    values: dict[tuple[int, int], float] = defaultdict(float)
    for entry in train:
        weight = weights.get(entry.interaction.type, 0.0)
        if weight > 0:
            cell = (user_index[entry.visitor_id], item_index[entry.interaction.item.id])
            values[cell] += weight
    rows = [row for row, _ in values]
    cols = [col for _, col in values]
    matrix = csr_matrix(
        (list(values.values()), (rows, cols)), shape=(len(users), len(items))
    )
    return matrix, user_index, items


def als_ranker(train, weights, k):
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    matrix, user_index, items = interaction_matrix(train, weights)
    confidence = (matrix * 40).tocsr()  # the usual alpha for implicit feedback
    model = AlternatingLeastSquares(
        factors=64, regularization=0.05, iterations=15, random_state=0
    )
    started = time.perf_counter()
    with threadpool_limits(1):
        model.fit(confidence, show_progress=False)
    trained = time.perf_counter() - started

    def rank(user: str) -> list[int]:
        index = user_index.get(user)
        if index is None:
            return []
        ids, _ = model.recommend(
            index, confidence[index], N=k, filter_already_liked_items=False
        )
        return [items[i] for i in ids]

    return rank, trained


def ease_ranker(train, weights, k, regularization=250.0):
    matrix, user_index, items = interaction_matrix(train, weights)
    binary = (matrix > 0).astype(np.float64)
    popular = np.argsort(-np.asarray(binary.sum(axis=0)).ravel())[:EASE_MAX_ITEMS]
    kept = binary[:, popular]
    started = time.perf_counter()
    gram = (kept.T @ kept).toarray()
    gram[np.diag_indices_from(gram)] += regularization
    inverse = np.linalg.inv(gram)
    weights_matrix = -inverse / np.diag(inverse)
    np.fill_diagonal(weights_matrix, 0.0)
    trained = time.perf_counter() - started
    kept = kept.tocsr()

    def rank(user: str) -> list[int]:
        index = user_index.get(user)
        if index is None:
            return []
        scores = kept[index] @ weights_matrix
        top = np.argsort(-np.asarray(scores).ravel())[:k]
        return [items[popular[i]] for i in top]

    return rank, trained


def evaluate_dataset(name, loaded, split_method, k):
    categories, items, events, relevant_weight = loaded
    split = split_log(
        events, split_method, DEFAULT_INTERACTION_WEIGHTS, relevant_weight
    )
    print(
        f"{name}: {len(events):,} events, {len(split.train):,} training, "
        f"{len(split.test):,} test visitors, {len(items):,} items",
        flush=True,
    )
    started = time.perf_counter()
    settings = Settings.from_config(tunables_from_environment())
    replay = replay_system(categories, items, split, settings)
    build_seconds = time.perf_counter() - started
    results = replay.evaluate(split.test, k, len(items))
    for label, make in (("ALS (implicit)", als_ranker), ("EASE", ease_ranker)):
        rank, trained = make(split.train, DEFAULT_INTERACTION_WEIGHTS, k)
        results[label] = score_rankings(rank, split.test, k, len(items))
        results[label]["training_s"] = trained
    for row in results.values():
        print(row, flush=True)
    return {
        "results": results,
        "events": len(events),
        "train": len(split.train),
        "test_users": len(split.test),
        "items": len(items),
        "build_s": build_seconds,
    }


def markdown(reports: dict, split_method: str, k: int) -> str:
    lines = [
        "Command: `.venv/bin/python bench/evaluate_public.py --write BENCHMARKS.md` "
        f"(split {split_method}, k = {k}). Each engine row is one of the site's own "
        "recommender objects (personalization/recommenders.py), replayed by "
        "`personalization_system.replay_system` over an in-memory database holding "
        "the training log (popularity, co-visitation and affinities rebuilt as of "
        "the cutoff) and ranking through the page's own list (disliked items last); "
        "'category affinity' and 'co-visitation' are the served blend with only that "
        "part weighted. ALS and EASE get the same training events (positive weights "
        "as confidence) and are scored on the same test visitors. Already-seen items "
        "are not filtered out by any method, as the site does not filter them; "
        "ms/ranking includes reading the visitor's profile.",
        "",
    ]
    for name, report in reports.items():
        lines += [
            f"**{name}**: {report['events']:,} events, {report['train']:,} for "
            f"training, {report['test_users']:,} test visitors, "
            f"{report['items']:,} items.",
            "",
            format_table(report["results"], k),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="ml-100k,taobao")
    parser.add_argument(
        "--split", default="temporal", choices=["temporal", "leave-last-out"]
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--events", type=Path, help="evaluate this CSV log instead")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    loaders = {"ml-100k": load_movielens, "taobao": load_taobao}
    if args.events:
        datasets = {args.events.name: lambda: load_csv(args.events)}
    else:
        datasets = {name: loaders[name] for name in args.datasets.split(",")}
    reports = {
        name: evaluate_dataset(name, load(), args.split, args.k)
        for name, load in datasets.items()
    }
    if args.json:
        print(
            json.dumps(
                {name: report["results"] for name, report in reports.items()}, indent=2
            )
        )
    else:
        print(markdown(reports, args.split, args.k))
    if args.write:
        replace_section(
            args.write, "offline-evaluation", markdown(reports, args.split, args.k)
        )


if __name__ == "__main__":
    main()
