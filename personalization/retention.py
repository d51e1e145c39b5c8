"""Keeping only what is needed: the retention cleanup of every table that holds
visitor data. Deletes run in batches; the facade commits each one."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, delete, func, select

from models import (
    ConsultationRequest,
    ErasedVisitor,
    ExperimentAssignment,
    PendingInteraction,
    PersonalizeOutbox,
    RecommendationImpression,
    UserCategoryAffinity,
    UserInteraction,
    VisitorPreference,
    WebhookEventKey,
)
from personalization.outbox import DELETE_USER
from personalization.privacy import ERASED_VISITOR_HOURS
from personalization.settings import Settings
from personalization.statistics import Affinity

# How long webhook de-duplication keys are kept: Amplitude retries for 4 hours.
WEBHOOK_KEY_DAYS = 7


@dataclass(frozen=True)
class RetentionTask:
    """Rows of one table that have outlived their use."""

    label: str
    model: type
    # Selects the ids (primary keys) of the rows, oldest first.
    ids: Select


class Retention:
    def __init__(self, session, settings: Settings, affinity: Affinity):
        self.session = session
        self.settings = settings
        self.affinity = affinity

    def tasks(self, days: int, now: datetime) -> list[RetentionTask]:
        """Everything the cleanup removes: every table that holds visitor data,
        on one schedule (`days`, INTERACTION_RETENTION_DAYS by default), and
        consultation requests after CONSULTATION_RETENTION_DAYS.

        tests/test_cleanup.py fails when a table with a visitor column is added
        without a task here.
        """
        cutoff = now - timedelta(days=days)
        affinity = UserCategoryAffinity.__table__
        outbox = PersonalizeOutbox.__table__
        return [
            RetentionTask(
                "interactions",
                UserInteraction,
                select(UserInteraction.id)
                .where(UserInteraction.timestamp < cutoff)
                .order_by(UserInteraction.id),
            ),
            # Still in the aggregator's inbox (seconds, as a rule) yet already
            # past the period: an old event delivered late.
            RetentionTask(
                "interactions waiting for aggregation",
                PendingInteraction,
                select(PendingInteraction.id)
                .where(PendingInteraction.timestamp < cutoff)
                .order_by(PendingInteraction.id),
            ),
            # Faded below the floor, or not fed by any interaction still kept.
            RetentionTask(
                "affinities",
                UserCategoryAffinity,
                select(affinity.c.id)
                .where(
                    self.affinity.has_faded(now) | (affinity.c.last_updated < cutoff)
                )
                .order_by(affinity.c.id),
            ),
            # Delivered, waiting or refused for good: past the period, all go;
            # except a "forget me" not yet carried out in Personalize, which must
            # outlive the period until it is (it names no interest, only who).
            RetentionTask(
                "Personalize events",
                PersonalizeOutbox,
                select(outbox.c.id)
                .where(
                    (outbox.c.occurred_at < cutoff) | (outbox.c.sent_at < cutoff),
                    (outbox.c.event_type != DELETE_USER) | (outbox.c.sent_at < cutoff),
                )
                .order_by(outbox.c.id),
            ),
            RetentionTask(
                "webhook keys",
                WebhookEventKey,
                select(WebhookEventKey.key_hash)
                .where(
                    WebhookEventKey.received_at
                    < now - timedelta(days=min(days, WEBHOOK_KEY_DAYS))
                )
                .order_by(WebhookEventKey.key_hash),
            ),
            RetentionTask(
                "impressions",
                RecommendationImpression,
                select(RecommendationImpression.id)
                .where(RecommendationImpression.shown_at < cutoff)
                .order_by(RecommendationImpression.id),
            ),
            # A returning visitor past the period is assigned again (the same
            # arm, unless the control share changed).
            RetentionTask(
                "experiment assignments",
                ExperimentAssignment,
                select(ExperimentAssignment.user_id)
                .where(ExperimentAssignment.assigned_at < cutoff)
                .order_by(ExperimentAssignment.user_id),
            ),
            RetentionTask(
                "city choices",
                VisitorPreference,
                select(VisitorPreference.user_id)
                .where(VisitorPreference.updated_at < cutoff)
                .order_by(VisitorPreference.user_id),
            ),
            *self.late_writes_of_the_erased(),
            # Needed only while writes of the visitor may still arrive.
            RetentionTask(
                "erasure notes",
                ErasedVisitor,
                select(ErasedVisitor.user_id)
                .where(
                    ErasedVisitor.erased_at
                    < now - timedelta(hours=ERASED_VISITOR_HOURS)
                )
                .order_by(ErasedVisitor.user_id),
            ),
            RetentionTask(
                "consultation requests",
                ConsultationRequest,
                select(ConsultationRequest.id)
                .where(
                    ConsultationRequest.created_at
                    < now - timedelta(days=self.settings.consultation_retention_days)
                )
                .order_by(ConsultationRequest.id),
            ),
        ]

    def late_writes_of_the_erased(self) -> list[RetentionTask]:
        """Rows of visitors noted in erased_visitors: a request in flight when
        its visitor chose "forget me" can commit after the erasure. The
        aggregator and the page store drop what they hold of such visitors; a
        bare page view, a city choice or an experiment assignment goes straight
        in, so it goes here, before the note that names it is deleted (the
        tasks run in order). Visitor ids are random and the erasure gives the
        browser a new one, so no one else's rows carry an erased id."""
        erased = select(ErasedVisitor.user_id)
        outbox = PersonalizeOutbox.__table__
        return [
            RetentionTask(
                f"{label} stored after an erasure",
                model,
                select(key).where(model.user_id.in_(erased), *also).order_by(key),
            )
            for label, model, key, *also in (
                ("interactions", UserInteraction, UserInteraction.id),
                ("interactions waiting", PendingInteraction, PendingInteraction.id),
                ("affinities", UserCategoryAffinity, UserCategoryAffinity.id),
                # Not the erasure's own request that Personalize delete them.
                (
                    "Personalize events",
                    PersonalizeOutbox,
                    outbox.c.id,
                    outbox.c.event_type != DELETE_USER,
                ),
                ("lists shown", RecommendationImpression, RecommendationImpression.id),
                ("city choices", VisitorPreference, VisitorPreference.user_id),
                (
                    "experiment assignments",
                    ExperimentAssignment,
                    ExperimentAssignment.user_id,
                ),
            )
        ]

    def count(self, task: RetentionTask) -> int:
        """How many rows a task would delete."""
        return self.session.scalar(
            select(func.count()).select_from(task.ids.subquery())
        )

    def delete_batch(self, task: RetentionTask, batch_size: int) -> int:
        """Delete the task's next `batch_size` rows; return how many went."""
        key = task.ids.selected_columns[0]
        batch = task.ids.limit(batch_size).subquery()
        return self.session.execute(
            delete(task.model).where(key.in_(select(*batch.c)))
        ).rowcount
