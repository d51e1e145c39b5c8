"""What one visitor can see of their data and erase: "download my data" (GDPR
articles 15 and 20) and "forget me" (article 17), for the visitor their own
cookie names, never anyone else."""

import json
from datetime import datetime

from sqlalchemy import delete, func, select

from models import (
    Category,
    ConsultationRequest,
    ErasedVisitor,
    PendingInteraction,
    PersonalizeOutbox,
    UserCategoryAffinity,
    UserInteraction,
    as_utc,
    dialect_insert,
    utcnow,
)
from personalization.consultations import Consultations, as_record
from personalization.events import ItemKey
from personalization.experiment import Experiment
from personalization.impressions import Impressions
from personalization.items import Items
from personalization.outbox import Outbox
from personalization.preferences import Preferences
from personalization.settings import Settings
from personalization.statistics import decayed

# How long an erased visitor's id is kept in erased_visitors, so that writes of
# theirs still on their way are dropped (see ErasedVisitor).
ERASED_VISITOR_HOURS = 24


class Privacy:
    def __init__(
        self,
        session,
        settings: Settings,
        items: Items,
        consultations: Consultations,
        impressions: Impressions,
        preferences: Preferences,
        experiment: Experiment,
        personalize_outbox: Outbox | None = None,
    ):
        self.session = session
        self.settings = settings
        self.items = items
        self.consultations = consultations
        self.impressions = impressions
        self.preferences = preferences
        self.experiment = experiment
        # Set when Personalize data deletion is configured: "forget me" queues
        # the visitor's erasure there too.
        self.personalize_outbox = personalize_outbox

    def summary(self, visitor_id: str) -> dict:
        """How much is stored about a visitor, and their strongest interests."""
        interactions = self.session.scalar(
            select(func.count()).where(UserInteraction.user_id == visitor_id)
        )
        requests = self.session.scalar(
            select(func.count()).where(ConsultationRequest.user_id == visitor_id)
        )
        interests = [row["category"] for row in self.interests(visitor_id)[:3]]
        return {
            "interactions": interactions,
            "interests": interests,
            "consultation_requests": requests,
            "city": self.preferences.city(visitor_id),
        }

    def interests(self, visitor_id: str, now: datetime | None = None) -> list[dict]:
        """The visitor's interest per category, decayed to now, strongest first."""
        rows = self.session.execute(
            select(
                Category.name,
                UserCategoryAffinity.affinity_score,
                UserCategoryAffinity.last_updated,
            )
            .join(Category, Category.id == UserCategoryAffinity.category_id)
            .where(UserCategoryAffinity.user_id == visitor_id)
        ).all()
        now = now or utcnow()
        rate = self.settings.affinity_decay_rate
        found = [
            {
                "category": name,
                "score": round(decayed(score, updated, now, rate), 4),
                "last_updated": as_utc(updated).isoformat(),
            }
            for name, score, updated in rows
        ]
        return sorted(found, key=lambda row: (-row["score"], row["category"]))

    def download(self, visitor_id: str, now: datetime) -> dict:
        """Everything stored about the visitor, in plain words: interests, every
        interaction still kept, events still waiting for AWS Personalize."""
        log = UserInteraction
        rows = self.session.execute(
            select(
                log.interaction_type,
                log.target_type,
                log.target_id,
                log.extra_data,
                log.timestamp,
            )
            .where(log.user_id == visitor_id)
            .order_by(log.timestamp, log.id)
        ).all()
        names = self.item_names(
            ItemKey(kind, item_id) for _, kind, item_id, _, _ in rows if item_id
        )
        outbox = self.session.execute(
            select(
                PersonalizeOutbox.event_type,
                PersonalizeOutbox.item_id,
                PersonalizeOutbox.occurred_at,
            )
            .where(
                PersonalizeOutbox.user_id == visitor_id,
                PersonalizeOutbox.sent_at.is_(None),
            )
            .order_by(PersonalizeOutbox.id)
        ).all()
        return {
            "visitor_id": visitor_id,
            "exported_at": now.isoformat(),
            "retention_days": self.settings.interaction_retention_days,
            "city": self.preferences.city(visitor_id),
            "interests": self.interests(visitor_id, now),
            "interactions": [
                {
                    "type": interaction_type,
                    "item": {
                        "kind": kind,
                        "id": item_id,
                        "name": names.get(ItemKey(kind, item_id)),
                    }
                    if item_id
                    else None,
                    "details": json.loads(extra) if extra else None,
                    "at": as_utc(stamp).isoformat(),
                }
                for interaction_type, kind, item_id, extra, stamp in rows
            ],
            "waiting_for_aws_personalize": [
                {"type": kind, "item": item, "at": as_utc(stamp).isoformat()}
                for kind, item, stamp in outbox
            ],
            "consultation_requests": [
                as_record(request)
                for request in self.consultations.of_visitor(visitor_id)
            ],
            "consultation_retention_days": self.settings.consultation_retention_days,
            "recommendations_shown": self.impressions.of_visitor(visitor_id),
            "experiment_arms": [
                {**row, "at": as_utc(row["at"]).isoformat()}
                for row in self.experiment.of_visitor(visitor_id)
            ],
        }

    def item_names(self, keys) -> dict[ItemKey, str]:
        """The catalog names of these items (deleted ones have none)."""
        by_kind: dict[str, set[int]] = {}
        for key in keys:
            by_kind.setdefault(key.kind, set()).add(key.id)
        return {
            ItemKey(kind, item_id): item.name
            for kind, ids in by_kind.items()
            for item_id, item in self.items.load(kind, ids).items()
        }

    def forget(self, visitor_id: str) -> dict[str, int]:
        """Delete every interaction, affinity, consultation request, preference,
        impression and experiment assignment of the visitor; count the first three.

        Events still waiting for Personalize go too: erasure reaches the outbox;
        and with Personalize data deletion configured, a deletion of the visitor
        is queued there (a data deletion job, sent by the outbox's delivery).
        The erasure itself is noted for ERASED_VISITOR_HOURS, so what a server
        process still holds of the visitor is dropped, not stored.
        """
        interactions = sum(
            self.session.execute(
                delete(model).where(model.user_id == visitor_id)
            ).rowcount
            for model in (UserInteraction, PendingInteraction)  # the inbox too
        )
        affinities = self.session.execute(
            delete(UserCategoryAffinity).where(
                UserCategoryAffinity.user_id == visitor_id
            )
        ).rowcount
        self.session.execute(
            delete(PersonalizeOutbox).where(PersonalizeOutbox.user_id == visitor_id)
        )
        if self.personalize_outbox:
            self.personalize_outbox.queue_deletion(visitor_id, utcnow())
        requests = self.session.execute(
            delete(ConsultationRequest).where(ConsultationRequest.user_id == visitor_id)
        ).rowcount
        self.preferences.choose_city(visitor_id, None)
        self.impressions.forget(visitor_id)
        self.experiment.forget(visitor_id)
        self.remember_erased(visitor_id)
        return {
            "interactions": interactions,
            "affinities": affinities,
            "consultation_requests": requests,
        }

    def remember_erased(self, visitor_id: str) -> None:
        """Note the erasure for ERASED_VISITOR_HOURS (again, if it was erased
        before)."""
        insert = dialect_insert(self.session, ErasedVisitor.__table__)
        self.session.execute(
            insert.values(user_id=visitor_id, erased_at=utcnow()).on_conflict_do_update(
                index_elements=["user_id"],
                set_={"erased_at": insert.excluded.erased_at},
            )
        )

    def erased_among(self, visitor_ids: set[str]) -> set[str]:
        """Which of these visitors were erased lately."""
        if not visitor_ids:
            return set()
        return set(
            self.session.scalars(
                select(ErasedVisitor.user_id).where(
                    ErasedVisitor.user_id.in_(sorted(visitor_ids))
                )
            )
        )
