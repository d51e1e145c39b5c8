"""The admin dashboard's figures: one method per page, each returning plain
dicts and lists (numbers, labels, ISO days) for the templates to show. Counts
are SQL aggregates that run alike on SQLite and PostgreSQL; Python only joins
the few rows they return (and attributes clicks to their lists)."""

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import case, distinct, func, select

from models import (
    Category,
    ConsultationRequest,
    Doctor,
    ExperimentAssignment,
    Package,
    Procedure,
    RecommendationImpression,
    RejectedEventCount,
    UserInteraction,
    WebhookEventKey,
    as_utc,
)
from personalization.experiment import EXPERIMENT, Experiment, arm_order
from personalization.intervals import wilson_interval
from personalization.journeys import Journeys
from personalization.outbox import MAX_ATTEMPTS, Outbox
from personalization.recommenders import ENGINE, FALLBACK, PERSONALIZE
from personalization.regions import CityRates
from personalization.reporting import (
    NO_ARM,
    Window,
    day_of,
    first_seen,
    rate,
    recommended_clicks,
)
from personalization.settings import Settings

PAGES = (
    "overview",
    "recommendations",
    "experiment",
    "regions",
    "quality",
    "journeys",
    "cohorts",
)
# Interaction types drawn as their own line; the rest are added up as "other".
EVENT_TYPES_DRAWN = 5
SOURCES = (ENGINE, FALLBACK, PERSONALIZE)
CATALOG = {
    "procedure": Procedure,
    "doctor": Doctor,
    "category": Category,
    "package": Package,
}
# Regions: visitors ranked per city, the home page's list length, rows shown.
REGION_SAMPLE = 50
REGION_K = 6
REGION_TOP = 5

MatchRates = Callable[[int, int], list[CityRates]]


class Dashboard:
    """Reads the log, impressions and queues for the /admin pages."""

    def __init__(self, session, settings: Settings, clock: Callable[[], datetime]):
        self.session = session
        self.settings = settings
        self.clock = clock
        self.journeys = Journeys(session, clock)

    def page(self, name: str, days: int, match_rates: MatchRates) -> dict:
        """The figures of one page (see PAGES) over the last `days` days."""
        if name not in PAGES:
            raise ValueError(f"no dashboard page {name!r}")
        window = Window.ending(self.clock(), days)
        if name == "regions":
            return self.regions(match_rates)
        if name == "experiment":
            return self.experiment(days)
        if name in ("journeys", "cohorts"):
            return getattr(self.journeys, name)(window)
        return getattr(self, name)(window)

    # Overview

    def overview(self, window: Window) -> dict:
        """Events per day by type, visitors and returning visitors per day, and
        consultation requests per day."""
        log = UserInteraction
        day = day_of(log.timestamp)
        events: dict[str, dict[str, int]] = defaultdict(dict)
        totals: Counter[str] = Counter()
        for when, kind, n in self.session.execute(
            select(day, log.interaction_type, func.count())
            .where(log.timestamp >= window.since)
            .group_by(day, log.interaction_type)
        ):
            events[kind][when] = n
            totals[kind] += n
        drawn = [kind for kind, _ in totals.most_common(EVENT_TYPES_DRAWN)]
        other: Counter[str] = Counter()
        for kind in set(totals) - set(drawn):
            other.update(events[kind])
        series = [(kind, window.series(events[kind])) for kind in drawn]
        if other:
            series.append(("other", window.series(other)))

        first = first_seen(window.since)
        returning = case((day_of(first.c.at) < day, log.user_id))
        visitors, returners = {}, {}
        for when, n, back in self.session.execute(
            select(
                day, func.count(distinct(log.user_id)), func.count(distinct(returning))
            )
            .join(first, first.c.user_id == log.user_id)
            .where(log.timestamp >= window.since)
            .group_by(day)
        ):
            visitors[when], returners[when] = n, back
        visitors_total, returning_total = self.session.execute(
            select(func.count(distinct(log.user_id)), func.count(distinct(returning)))
            .join(first, first.c.user_id == log.user_id)
            .where(log.timestamp >= window.since)
        ).one()

        requests = self.rows_per_day(ConsultationRequest.created_at, window)
        return {
            "days": window.day_labels(),
            "events_total": sum(totals.values()),
            "events_by_type": dict(totals.most_common()),
            "events_series": series,
            "visitors_total": visitors_total,
            "returning_total": returning_total,
            "visitors": window.series(visitors),
            "returning": window.series(returners),
            "requests_total": sum(requests.values()),
            "requests": window.series(requests),
        }

    def rows_per_day(self, timestamp, window: Window) -> dict[str, int]:
        """Rows of a table per UTC day of one of its timestamps, in the window."""
        day = day_of(timestamp)
        return dict(
            self.session.execute(
                select(day, func.count()).where(timestamp >= window.since).group_by(day)
            ).all()
        )

    # Recommendations

    def recommendations(self, window: Window) -> dict:
        """Click-through by arm, source, section and position; coverage of the
        catalog; dismiss rate."""
        shown = RecommendationImpression
        recent = shown.shown_at >= window.since
        clicks = recommended_clicks(self.session, window.since)

        by_arm = dict(
            self.session.execute(
                select(shown.arm, func.sum(shown.item_count))
                .where(recent)
                .group_by(shown.arm)
            ).all()
        )
        by_arm = {arm or NO_ARM: int(n or 0) for arm, n in by_arm.items()}
        sections = {
            name: (lists, int(items or 0))
            for name, lists, items in self.session.execute(
                select(shown.list_name, func.count(), func.sum(shown.item_count))
                .where(recent)
                .group_by(shown.list_name)
            )
        }
        # Items shown per source: how often its quoted name occurs in the lists'
        # JSON, counted in SQL by what replace() takes out.
        per_source = self.session.execute(
            select(
                *(
                    func.coalesce(
                        func.sum(
                            (
                                func.length(shown.items)
                                - func.length(func.replace(shown.items, f'"{s}"', ""))
                            )
                            / len(f'"{s}"')
                        ),
                        0,
                    )
                    for s in SOURCES
                )
            ).where(recent)
        ).one()
        lengths = dict(
            self.session.execute(
                select(shown.item_count, func.count())
                .where(recent)
                .group_by(shown.item_count)
            ).all()
        )
        longest = max(lengths, default=0)
        at_position = {
            p: sum(n for length, n in lengths.items() if length >= p)
            for p in range(1, longest + 1)
        }

        dismissed_by_arm = dict(
            self.session.execute(
                select(ExperimentAssignment.arm, func.count())
                .select_from(UserInteraction)
                .outerjoin(
                    ExperimentAssignment,
                    (ExperimentAssignment.user_id == UserInteraction.user_id)
                    & (ExperimentAssignment.experiment == EXPERIMENT),
                )
                .where(
                    UserInteraction.interaction_type == "not_interested",
                    UserInteraction.timestamp >= window.since,
                )
                .group_by(ExperimentAssignment.arm)
            ).all()
        )
        dismissed_by_arm = {arm or NO_ARM: n for arm, n in dismissed_by_arm.items()}
        total_shown = sum(by_arm.values())
        dismissed = sum(dismissed_by_arm.values())

        def rows(shown_by: dict, clicked_by: Counter, extra=None) -> list[dict]:
            found = []
            for name, n in shown_by.items():
                c = clicked_by.get(name, 0)
                ctr = wilson_interval(c, n)
                row = {
                    "name": name,
                    "shown": n,
                    "clicked": c,
                    "click_through": ctr.value,
                    "low": ctr.low,
                    "high": ctr.high,
                }
                if extra:
                    row.update(extra(name))
                found.append(row)
            return found

        return {
            "shown": total_shown,
            "lists": sum(lists for lists, _ in sections.values()),
            "clicked": len(clicks),
            "click_through": rate(len(clicks), total_shown),
            "dismissed": dismissed,
            "dismiss_rate": rate(dismissed, total_shown),
            "by_arm": rows(
                dict(sorted(by_arm.items(), key=lambda item: arm_order(item[0]))),
                Counter(c.arm for c in clicks),
                lambda arm: {
                    "dismissed": dismissed_by_arm.get(arm, 0),
                    "dismiss_rate": rate(dismissed_by_arm.get(arm, 0), by_arm[arm]),
                },
            ),
            "by_source": rows(
                {s: int(n) for s, n in zip(SOURCES, per_source, strict=True) if n},
                Counter(c.source for c in clicks),
            ),
            "by_section": rows(
                {name: items for name, (_, items) in sorted(sections.items())},
                Counter(c.list_name for c in clicks),
                lambda name: {"lists": sections[name][0]},
            ),
            "by_position": rows(at_position, Counter(c.position for c in clicks)),
            "coverage": self.coverage(window),
        }

    def coverage(self, window: Window) -> list[dict]:
        """Per item kind: distinct items shown at least once / items in the
        catalog. Identical lists (everyone's popular list) are read once."""
        shown_items: dict[str, set] = defaultdict(set)
        for kind, items in self.session.execute(
            select(RecommendationImpression.item_kind, RecommendationImpression.items)
            .where(RecommendationImpression.shown_at >= window.since)
            .distinct()
        ):
            shown_items[kind].update(item_id for item_id, *_ in json.loads(items))
        found = []
        for kind, model in CATALOG.items():
            size = self.session.scalar(select(func.count()).select_from(model))
            items = len(shown_items.get(kind, ()))
            found.append(
                {
                    "kind": kind,
                    "shown": items,
                    "catalog": size,
                    "share": rate(items, size),
                }
            )
        return found

    # Experiment and regions

    def experiment(self, days: int) -> dict:
        """The A/B report (see personalization/experiment.py) as plain values."""
        return (
            Experiment(self.session, self.settings, self.clock).report(days).as_dict()
        )

    def regions(self, match_rates: MatchRates) -> dict:
        """Per city visitors chose: how alike the home page ranks procedures for
        a sample of them (the share whose top list holds each)."""
        names = dict(self.session.execute(select(Procedure.id, Procedure.name)).all())
        cities = [
            {
                "city": city.city,
                "visitors": city.visitors,
                "sample": city.sample,
                "procedures": [
                    {
                        "name": names.get(r.procedure_id, f"#{r.procedure_id}"),
                        "visitors": r.visitors,
                        "rate": r.rate,
                        "label": r.label,
                    }
                    for r in city.procedures[:REGION_TOP]
                ],
            }
            for city in match_rates(REGION_SAMPLE, REGION_K)
        ]
        return {"cities": cities, "k": REGION_K, "sample": REGION_SAMPLE}

    # Data quality

    def quality(self, window: Window) -> dict:
        """Rejected events by reason, webhook deliveries per day, the
        Personalize outbox's backlog."""
        rejected = RejectedEventCount
        since_day = window.first_day
        reasons = [
            {"source": source, "reason": reason, "count": int(n)}
            for source, reason, n in self.session.execute(
                select(rejected.source, rejected.reason, func.sum(rejected.count))
                .where(rejected.day >= since_day)
                .group_by(rejected.source, rejected.reason)
                .order_by(func.sum(rejected.count).desc(), rejected.reason)
            )
        ]
        rejected_days = {
            day.isoformat(): int(n)
            for day, n in self.session.execute(
                select(rejected.day, func.sum(rejected.count))
                .where(rejected.day >= since_day)
                .group_by(rejected.day)
            )
        }
        webhooks = self.rows_per_day(WebhookEventKey.received_at, window)
        backlog = Outbox(self.session, self.settings).backlog()
        oldest = backlog.oldest_pending
        return {
            "days": window.day_labels(),
            "rejected_reasons": reasons,
            "rejected_total": sum(r["count"] for r in reasons),
            "rejected": window.series(rejected_days),
            "webhooks": window.series(webhooks),
            "webhooks_total": sum(webhooks.values()),
            "outbox": {
                "pending": backlog.pending,
                "refused": backlog.dead_letters,
                "max_attempts": MAX_ATTEMPTS,
                "oldest_pending": as_utc(oldest).isoformat(timespec="minutes")
                if isinstance(oldest, datetime)
                else oldest,
            },
        }
