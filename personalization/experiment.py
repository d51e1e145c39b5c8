"""The A/B holdout: does personalization help? Each tracked visitor is put in one
arm, "personalized" (the served engine) or "control" (popular lists only), by a
hash of their id, and the arm is stored, so they stay in it across visits even
when the control share changes. Visitors who are not tracked (GPC, DNT, opt-out)
are neither assigned nor counted.

The report compares the arms per visitor: click-through on recommended cards
and consultation requests, each with a 95% interval, the lift with a bootstrap
interval over visitors, and a sample-ratio-mismatch check."""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, func, select

from models import (
    ConsultationRequest,
    ExperimentAssignment,
    RecommendationImpression,
    dialect_insert,
)
from personalization.intervals import (
    Estimate,
    lift_interval,
    mean_interval,
    sample_ratio_check,
    wilson_interval,
)
from personalization.reporting import Window, recommended_clicks
from personalization.settings import Settings

PERSONALIZED = "personalized"
CONTROL = "control"
ARMS = (PERSONALIZED, CONTROL)
# The running experiment. Part of the hash: a new name reshuffles everyone.
EXPERIMENT = "personalization-holdout"
PERCENT = "{:.2%}"
LIFT = "{:+.1%}"


def arm_order(arm: str | None) -> int:
    """Where an arm goes in a report: personalized, control, then anything else
    (so every table and chart lists, and colours, the arms alike)."""
    return ARMS.index(arm) if arm in ARMS else len(ARMS)


def bucket(visitor_id: str, experiment: str = EXPERIMENT) -> float:
    """Where a visitor falls in [0, 1): uniform, fixed for a visitor and an
    experiment, and unrelated to anything else hashed from the id."""
    digest = hashlib.sha256(f"{experiment}:{visitor_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def arm_for(visitor_id: str, control_share: float) -> str:
    """The arm a new visitor goes to. Raising the share only moves visitors
    from personalized to control, never the other way."""
    return CONTROL if bucket(visitor_id) < control_share else PERSONALIZED


@dataclass
class VisitorOutcome:
    """What one assigned visitor saw and did during the experiment."""

    arm: str
    # The control share when they were assigned: their odds of being held out.
    control_share: float
    shown: int = 0
    clicked: int = 0
    consultations: int = 0


@dataclass(frozen=True)
class ArmReport:
    arm: str
    visitors: int
    lists: int
    shown: int
    clicked: int
    click_through: Estimate
    consultations: int
    # Share of visitors who asked for at least one consultation.
    converted: Estimate
    consultations_per_visitor: Estimate

    def as_dict(self) -> dict:
        return {
            "arm": self.arm,
            "visitors": self.visitors,
            "lists": self.lists,
            "shown": self.shown,
            "clicked": self.clicked,
            "click_through": self.click_through.as_dict(),
            "consultations": self.consultations,
            "converted": self.converted.as_dict(),
            "consultations_per_visitor": self.consultations_per_visitor.as_dict(),
        }


@dataclass(frozen=True)
class ExperimentReport:
    experiment: str
    since: datetime
    control_share: float
    arms: dict[str, ArmReport]
    # Personalized over control, relative (0.1 = 10% more).
    click_through_lift: Estimate
    consultation_lift: Estimate
    sample_ratio: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "experiment": self.experiment,
            "since": self.since.isoformat(),
            "control_share": self.control_share,
            "arms": {arm: report.as_dict() for arm, report in self.arms.items()},
            "click_through_lift": self.click_through_lift.as_dict(),
            "consultation_lift": self.consultation_lift.as_dict(),
            "sample_ratio": self.sample_ratio,
        }


class Experiment:
    """Assigns visitors to arms and reports how the arms compare."""

    def __init__(self, session, settings: Settings, clock: Callable[[], datetime]):
        self.session = session
        self.settings = settings
        self.clock = clock

    def arm(self, visitor_id: str) -> str:
        """The visitor's arm: the stored one, or a new assignment, stored."""
        stored = self.session.scalar(
            select(ExperimentAssignment.arm).where(
                ExperimentAssignment.experiment == EXPERIMENT,
                ExperimentAssignment.user_id == visitor_id,
            )
        )
        if stored:
            return stored
        share = self.settings.experiment_control_share
        arm = arm_for(visitor_id, share)
        # Two first requests at once compute the same arm: either insert is fine.
        self.session.execute(
            dialect_insert(self.session, ExperimentAssignment)
            .values(
                experiment=EXPERIMENT,
                user_id=visitor_id,
                arm=arm,
                control_share=share,
                assigned_at=self.clock(),
            )
            .on_conflict_do_nothing()
        )
        return arm

    def of_visitor(self, visitor_id: str) -> list[dict]:
        """The visitor's assignments, for "download my data"."""
        rows = self.session.scalars(
            select(ExperimentAssignment).where(
                ExperimentAssignment.user_id == visitor_id
            )
        )
        return [
            {"experiment": row.experiment, "arm": row.arm, "at": row.assigned_at}
            for row in rows
        ]

    def forget(self, visitor_id: str) -> int:
        return self.session.execute(
            delete(ExperimentAssignment).where(
                ExperimentAssignment.user_id == visitor_id
            )
        ).rowcount

    # The report

    def report(self, days: int = 30, seed: int = 0) -> ExperimentReport:
        """Compare the arms over visitors assigned in the last `days` whole UTC
        days, today included (the dashboard's window)."""
        since = Window.ending(self.clock(), days).since
        outcomes = self.outcomes(since)
        by_arm: dict[str, list[VisitorOutcome]] = {arm: [] for arm in ARMS}
        for outcome in outcomes.values():
            by_arm.setdefault(outcome.arm, []).append(outcome)
        lists = self.lists_per_arm(since)
        arms = {
            arm: arm_report(arm, visitors, lists.get(arm, 0))
            for arm, visitors in by_arm.items()
        }
        # Expected: each visitor's own odds when assigned, so a share changed
        # mid-window is not mistaken for a broken split.
        odds = [v.control_share for v in outcomes.values()]
        expected = sum(odds) / len(odds) if odds else 0.0
        ratio = sample_ratio_check(
            {arm: len(visitors) for arm, visitors in by_arm.items()},
            {CONTROL: expected, PERSONALIZED: 1 - expected},
        )
        share = self.settings.experiment_control_share
        treated, held_out = by_arm[PERSONALIZED], by_arm[CONTROL]
        return ExperimentReport(
            EXPERIMENT,
            since,
            share,
            arms,
            lift_interval(
                [(v.clicked, v.shown) for v in treated],
                [(v.clicked, v.shown) for v in held_out],
                seed=seed,
            ),
            lift_interval(
                [(v.consultations, 1) for v in treated],
                [(v.consultations, 1) for v in held_out],
                seed=seed,
            ),
            {
                "chi_square": round(ratio.chi_square, 4),
                "p_value": ratio.p_value,
                "mismatch": ratio.mismatch,
            },
        )

    def outcomes(self, since: datetime) -> dict[str, VisitorOutcome]:
        """Per assigned visitor: items shown, recommended cards clicked and
        consultation requests since `since`."""
        assigned = self.session.execute(
            select(
                ExperimentAssignment.user_id,
                ExperimentAssignment.arm,
                ExperimentAssignment.control_share,
            ).where(
                ExperimentAssignment.experiment == EXPERIMENT,
                ExperimentAssignment.assigned_at >= since,
            )
        )
        current = self.settings.experiment_control_share
        outcomes = {
            visitor: VisitorOutcome(arm, current if share is None else share)
            for visitor, arm, share in assigned
        }
        shown = self.session.execute(
            select(
                RecommendationImpression.user_id,
                func.sum(RecommendationImpression.item_count),
            )
            .where(RecommendationImpression.shown_at >= since)
            .group_by(RecommendationImpression.user_id)
        )
        for visitor, count in shown:
            if visitor in outcomes:
                outcomes[visitor].shown = int(count or 0)
        for click in recommended_clicks(self.session, since):
            if click.user_id in outcomes:
                outcomes[click.user_id].clicked += 1
        requests = self.session.execute(
            select(ConsultationRequest.user_id, func.count())
            .where(
                ConsultationRequest.created_at >= since,
                ConsultationRequest.user_id.is_not(None),
            )
            .group_by(ConsultationRequest.user_id)
        )
        for visitor, count in requests:
            if visitor in outcomes:
                outcomes[visitor].consultations = count
        return outcomes

    def lists_per_arm(self, since: datetime) -> dict[str, int]:
        return dict(
            self.session.execute(
                select(RecommendationImpression.arm, func.count())
                .where(
                    RecommendationImpression.shown_at >= since,
                    RecommendationImpression.arm.is_not(None),
                )
                .group_by(RecommendationImpression.arm)
            ).all()
        )


def arm_report(arm: str, visitors: list[VisitorOutcome], lists: int) -> ArmReport:
    shown = sum(v.shown for v in visitors)
    clicked = sum(v.clicked for v in visitors)
    return ArmReport(
        arm,
        len(visitors),
        lists,
        shown,
        clicked,
        wilson_interval(clicked, shown),
        sum(v.consultations for v in visitors),
        wilson_interval(sum(v.consultations > 0 for v in visitors), len(visitors)),
        mean_interval([v.consultations for v in visitors]),
    )


def format_report(report: ExperimentReport) -> str:
    """The report as the terminal table `flask personalization experiment` prints."""
    lines = [
        f"Experiment {report.experiment}: visitors assigned since "
        f"{report.since:%Y-%m-%d}, control share {report.control_share:.0%}",
        "",
        f"{'arm':<13}{'visitors':>9}{'lists':>8}{'shown':>8}{'clicks':>8}"
        f"  {'click-through (95% CI)':<28}{'requests/visitor (95% CI)':<28}",
    ]
    for arm in ARMS:
        row = report.arms[arm]
        lines.append(
            f"{arm:<13}{row.visitors:>9}{row.lists:>8}{row.shown:>8}{row.clicked:>8}"
            f"  {interval_text(row.click_through, PERCENT):<28}"
            f"{interval_text(row.consultations_per_visitor):<28}"
        )
    lines += [
        "",
        "Lift of personalized over control (bootstrap over visitors, 95% CI):",
        f"  click-through            {interval_text(report.click_through_lift, LIFT)}",
        f"  requests per visitor     {interval_text(report.consultation_lift, LIFT)}",
        "",
        "Sample ratio: chi-square {:.2f}, p = {:.4g}: {}".format(
            report.sample_ratio["chi_square"],
            report.sample_ratio["p_value"],
            "MISMATCH, the split is broken: do not trust the figures above"
            if report.sample_ratio["mismatch"]
            else "as configured",
        ),
    ]
    return "\n".join(lines)


def interval_text(estimate: Estimate, style: str = "{:.3f}") -> str:
    """ "12.0% [9.1%, 15.2%]" for a figure and its interval, in `style`."""
    if estimate.value is None:
        return "n/a (no data)"
    if estimate.low is None:
        return style.format(estimate.value)
    return "{} [{}, {}]".format(
        *(style.format(n) for n in (estimate.value, estimate.low, estimate.high))
    )
