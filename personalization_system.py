"""PersonalizationEngine: ranks the catalog for a visitor; today, by popularity."""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, func, select, union_all

from models import (
    Category,
    Doctor,
    Procedure,
    UserInteraction,
    db,
    doctor_procedures,
    utcnow,
)


@dataclass(frozen=True)
class RankedItem:
    """One catalog item in a ranking, with the score that placed it and why."""

    item: Any
    score: float
    reason: str


class PersonalizationEngine:
    """Ranks categories, procedures and doctors for the pages and the API."""

    def __init__(self, popularity_window_days: int = 30):
        self.popularity_window_days = popularity_window_days

    def _recent_interactions(self, target_type: str) -> Select:
        """Count each target's interactions inside the popularity window."""
        since = utcnow() - timedelta(days=self.popularity_window_days)
        return (
            select(
                UserInteraction.target_id.label("target_id"),
                func.count().label("hits"),
            )
            .where(
                UserInteraction.target_type == target_type,
                UserInteraction.timestamp >= since,
            )
            .group_by(UserInteraction.target_id)
        )

    def get_popular_categories(self, limit: int = 6) -> list[RankedItem]:
        """Rank categories by recent interest in them and in their procedures."""
        direct = self._recent_interactions("category").subquery()
        via_procedures = self._recent_interactions("procedure").subquery()
        per_category = union_all(
            select(direct.c.target_id.label("category_id"), direct.c.hits),
            select(Procedure.category_id, via_procedures.c.hits).join(
                via_procedures, via_procedures.c.target_id == Procedure.id
            ),
        ).subquery()
        hits = (
            select(per_category.c.category_id, func.sum(per_category.c.hits).label("n"))
            .group_by(per_category.c.category_id)
            .subquery()
        )
        # With no interactions yet, the curated catalog order (by id) stands.
        rows = db.session.execute(
            select(Category, func.coalesce(hits.c.n, 0))
            .outerjoin(hits, hits.c.category_id == Category.id)
            .order_by(func.coalesce(hits.c.n, 0).desc(), Category.id)
            .limit(limit)
        )
        return [self._ranked(item, n) for item, n in rows]

    def get_popular_procedures(self, limit: int = 6) -> list[RankedItem]:
        """Rank procedures by recent interactions, then by doctors offering them."""
        hits = self._recent_interactions("procedure").subquery()
        offered_by = (
            select(doctor_procedures.c.procedure_id, func.count().label("doctors"))
            .group_by(doctor_procedures.c.procedure_id)
            .subquery()
        )
        rows = db.session.execute(
            select(Procedure, func.coalesce(hits.c.hits, 0))
            .outerjoin(hits, hits.c.target_id == Procedure.id)
            .outerjoin(offered_by, offered_by.c.procedure_id == Procedure.id)
            .order_by(
                func.coalesce(hits.c.hits, 0).desc(),
                func.coalesce(offered_by.c.doctors, 0).desc(),
                Procedure.name,
            )
            .limit(limit)
        )
        return [self._ranked(item, n) for item, n in rows]

    def get_popular_doctors(self, limit: int = 9) -> list[RankedItem]:
        """Rank doctors by recent interactions, then by rating and review count."""
        hits = self._recent_interactions("doctor").subquery()
        rows = db.session.execute(
            select(Doctor, func.coalesce(hits.c.hits, 0))
            .outerjoin(hits, hits.c.target_id == Doctor.id)
            .order_by(
                func.coalesce(hits.c.hits, 0).desc(),
                Doctor.rating.desc(),
                Doctor.review_count.desc(),
                Doctor.name,
            )
            .limit(limit)
        )
        return [self._ranked(item, n) for item, n in rows]

    @staticmethod
    def _ranked(item: Any, hits: int) -> RankedItem:
        reason = "popular" if hits else "catalog"
        return RankedItem(item=item, score=float(hits), reason=reason)
