"""How visitors move through the site, for the admin dashboard: the funnel from
the home page to a consultation request per experiment arm, the commonest paths
through recommended cards, engaged time on page, and weekly retention cohorts."""

from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import date, datetime, timedelta

from sqlalchemy import case, distinct, func, select

from models import (
    ConsultationRequest,
    ExperimentAssignment,
    UserInteraction,
    days_between,
)
from personalization.experiment import EXPERIMENT, arm_order
from personalization.intervals import wilson_interval
from personalization.reporting import (
    NO_ARM,
    Window,
    day_of,
    first_seen,
    json_text,
    rate,
    recommended_clicks,
)

# The home page's view, as log_page_view stores it (encode_metadata's form).
HOME_VIEW = '{"path":"/"}'
FUNNEL_STEPS = ("home page", "procedure or doctor page", "consultation request")
# Paths: the most common shown, and the steps each keeps before "…".
TOP_PATHS = 10
PATH_STEPS = 4
REQUEST_STEP = "consultation request"
# Retention: weeks after the first visit that are reported.
RETENTION_WEEKS = (1, 2, 3, 4)
COHORT_LINES = 5


class Journeys:
    """Reads the log for the journeys and retention pages."""

    def __init__(self, session, clock: Callable[[], datetime]):
        self.session = session
        self.clock = clock

    def journeys(self, window: Window) -> dict:
        return {
            "funnel": self.funnel(window),
            "steps": list(FUNNEL_STEPS),
            "paths": self.paths(window),
            "engaged": self.engaged(window),
        }

    def funnel(self, window: Window) -> list[dict]:
        """Per arm: visitors who saw the home page in the window, then (later) a
        procedure or doctor page, then asked for a consultation."""
        log = UserInteraction
        home = (
            select(log.user_id, func.min(log.timestamp).label("at"))
            .where(
                log.interaction_type == "view",
                log.target_type == "page",
                log.extra_data == HOME_VIEW,
                log.timestamp >= window.since,
            )
            .group_by(log.user_id)
            .subquery()
        )
        item = (
            select(log.user_id, func.min(log.timestamp).label("at"))
            .join(home, home.c.user_id == log.user_id)
            .where(
                log.interaction_type == "view",
                log.target_type.in_(("procedure", "doctor")),
                log.timestamp >= home.c.at,
            )
            .group_by(log.user_id)
            .subquery()
        )
        asked = (
            select(ConsultationRequest.user_id)
            .join(item, item.c.user_id == ConsultationRequest.user_id)
            .where(ConsultationRequest.created_at >= item.c.at)
            .distinct()
            .subquery()
        )
        rows = self.session.execute(
            select(
                ExperimentAssignment.arm,
                func.count(home.c.user_id),
                func.count(item.c.user_id),
                func.count(asked.c.user_id),
            )
            .select_from(home)
            .outerjoin(item, item.c.user_id == home.c.user_id)
            .outerjoin(asked, asked.c.user_id == home.c.user_id)
            .outerjoin(
                ExperimentAssignment,
                (ExperimentAssignment.user_id == home.c.user_id)
                & (ExperimentAssignment.experiment == EXPERIMENT),
            )
            .group_by(ExperimentAssignment.arm)
        )
        return [
            {
                "arm": arm or NO_ARM,
                "counts": [started, viewed, requested],
                "rates": [1.0, rate(viewed, started), rate(requested, started)],
                # 95% Wilson intervals of the two shares.
                "intervals": [
                    wilson_interval(n, started).as_dict() for n in (viewed, requested)
                ],
            }
            for arm, started, viewed, requested in sorted(
                rows, key=lambda row: arm_order(row[0])
            )
        ]

    def paths(self, window: Window) -> dict:
        """The commonest sequences of recommended lists a visit clicked through
        (a repeat of the same list is one step), ending in a consultation
        request when the visit made one after its first click."""
        visits = defaultdict(list)
        for click in recommended_clicks(self.session, window.since):
            visits[(click.user_id, click.session_id)].append(click)
        log = UserInteraction
        requests = {
            (user_id, session_id): at
            for user_id, session_id, at in self.session.execute(
                select(log.user_id, log.session_id, func.max(log.timestamp))
                .where(
                    log.interaction_type == "form_submit",
                    log.timestamp >= window.since,
                )
                .group_by(log.user_id, log.session_id)
            )
        }
        counts: Counter[tuple[str, ...]] = Counter()
        for visit, clicks in visits.items():
            steps: list[str] = []
            for click in clicks:
                if not steps or steps[-1] != click.list_name:
                    steps.append(click.list_name)
            if len(steps) > PATH_STEPS:
                steps = [*steps[:PATH_STEPS], "…"]
            asked_at = requests.get(visit)
            if asked_at is not None and asked_at >= clicks[0].at:
                steps.append(REQUEST_STEP)
            counts[tuple(steps)] += 1
        return {
            "visits": len(visits),
            "converted": sum(
                n for path, n in counts.items() if path[-1] == REQUEST_STEP
            ),
            "top": [
                {"steps": list(path), "visits": n, "share": rate(n, len(visits))}
                for path, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[
                    :TOP_PATHS
                ]
            ],
        }

    def engaged(self, window: Window) -> list[dict]:
        """Visible seconds per page kind, from the tracker's "engaged" events:
        pages measured, total and median seconds."""
        log = UserInteraction
        seconds = json_text(log.extra_data, "seconds")
        engaged = (log.interaction_type == "engaged") & (log.timestamp >= window.since)
        histogram: dict[str, Counter[int]] = defaultdict(Counter)
        for kind, value, n in self.session.execute(
            select(log.target_type, seconds, func.count())
            .where(engaged, log.target_type != "page")
            .group_by(log.target_type, seconds)
        ):
            add_seconds(histogram[kind or "page"], value, n)
        path = json_text(log.extra_data, "path")
        for where, value, n in self.session.execute(
            select(path, seconds, func.count())
            .where(engaged, log.target_type == "page")
            .group_by(path, seconds)
        ):
            add_seconds(histogram[page_kind(where)], value, n)
        return sorted(
            (
                {
                    "kind": kind,
                    "pages": sum(counts.values()),
                    "seconds": sum(s * n for s, n in counts.items()),
                    "median": weighted_median(counts),
                }
                for kind, counts in histogram.items()
                if counts
            ),
            key=lambda row: (-row["seconds"], row["kind"]),
        )

    def cohorts(self, window: Window) -> dict:
        """Visitors by the week of their first interaction (weeks starting on
        Monday) and the share of each week's visitors active again 1-4 weeks
        (7-13 days, 14-20, ...) after their own first interaction."""
        log = UserInteraction
        first = first_seen(window.since)
        elapsed = days_between(first.c.at, log.timestamp)
        week = case(
            *((elapsed >= 7 * n, n) for n in (5, 4, 3, 2, 1)),
            else_=0,
        )
        first_day = day_of(first.c.at)
        counts: dict[date, Counter[int]] = defaultdict(Counter)
        for day, offset, n in self.session.execute(
            select(first_day, week, func.count(distinct(log.user_id)))
            .join(first, first.c.user_id == log.user_id)
            .where(first.c.at >= window.since)
            .group_by(first_day, week)
        ):
            started = date.fromisoformat(day)
            counts[started - timedelta(days=started.weekday())][offset] += n
        cohorts = []
        for monday in sorted(counts):
            size = counts[monday][0]
            cells = []
            for k in RETENTION_WEEKS:
                # Complete once the cohort's last day is k+1 whole weeks old.
                complete = window.today >= monday + timedelta(days=7 * (k + 2))
                cells.append(
                    {
                        "week": k,
                        "returned": counts[monday][k],
                        "share": rate(counts[monday][k], size),
                        "complete": complete,
                    }
                )
            cohorts.append(
                {"week_of": monday.isoformat(), "visitors": size, "cells": cells}
            )
        return {
            "weeks": list(RETENTION_WEEKS),
            "cohorts": cohorts,
            "average": [average_share(cohorts, i) for i in range(len(RETENTION_WEEKS))],
            "lines": [c for c in cohorts if c["cells"][0]["complete"]][-COHORT_LINES:],
        }


def average_share(cohorts: list[dict], index: int) -> float | None:
    """Week `index`'s share over every cohort that has completed it, weighted
    by cohort size."""
    done = [c for c in cohorts if c["cells"][index]["complete"]]
    return rate(
        sum(c["cells"][index]["returned"] for c in done),
        sum(c["visitors"] for c in done),
    )


def add_seconds(histogram: Counter, value: str | None, n: int) -> None:
    """Count `n` pages of `value` visible seconds; ignore what is not a number
    of seconds."""
    try:
        seconds = int(float(value))
    except (TypeError, ValueError, OverflowError):
        return
    if seconds >= 0:
        histogram[seconds] += n


def weighted_median(counts: Counter) -> float | None:
    """The median of values given as {value: how many}."""
    total = sum(counts.values())
    if not total:
        return None
    ordered = sorted(counts.items())

    def nth(rank: int) -> int:
        seen = 0
        for value, n in ordered:
            seen += n
            if seen > rank:
                return value
        return ordered[-1][0]

    return (nth((total - 1) // 2) + nth(total // 2)) / 2


def page_kind(path: str | None) -> str:
    """What an engaged page that is not a catalog item was: home, search, other."""
    if path == "/":
        return "home"
    if path == "/search":
        return "search"
    return "other pages"
