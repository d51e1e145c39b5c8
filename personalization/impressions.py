"""What the site showed: every recommendation list a tracked visitor saw, one row
per list, so click-through can be measured exactly per list, source and position
(a click on a card carries its list's id and position)."""

import json
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import delete, func, insert, select

from models import RecommendationImpression, UserInteraction, as_utc
from personalization.reporting import recommended_clicks

# What a visitor's feedback on a recommendation records.
FEEDBACK_INTERACTIONS = {"clicked": "click", "dismissed": "not_interested"}


class Impressions:
    """Records the lists a page showed, and reads them back for one visitor."""

    def __init__(self, session, clock: Callable[[], datetime]):
        self.session = session
        self.clock = clock

    def record(
        self, visitor_id: str, request_id: str, lists: dict, arm: str | None = None
    ) -> int:
        """Store the lists one request showed ({list name: Ranking}) to a visitor
        in an experiment arm, in one statement; empty lists are not stored.
        Return how many were."""
        rows = self.rows(visitor_id, request_id, lists, arm)
        self.store(rows)
        return len(rows)

    def rows(
        self, visitor_id: str, request_id: str, lists: dict, arm: str | None = None
    ) -> list[dict]:
        """The rows that record stores, shown now (a page may hold them a while:
        see page_buffer.py)."""
        now = self.clock()
        return [
            {
                "id": ranking.list_id,
                "user_id": visitor_id,
                "request_id": request_id,
                "list_name": name,
                "item_kind": ranking.kind,
                "items": json.dumps(
                    [[entry.item.id, entry.source] for entry in ranking],
                    separators=(",", ":"),
                ),
                "item_count": len(ranking),
                "arm": arm,
                "shown_at": now,
            }
            for name, ranking in lists.items()
            if ranking is not None and len(ranking)
        ]

    def store(self, rows: list[dict]) -> None:
        """Insert impression rows, of any visitors, in one statement."""
        if rows:
            # The table, not the class: a Core insert skips the ORM's bulk path.
            self.session.execute(insert(RecommendationImpression.__table__), rows)

    def of_visitor(self, visitor_id: str) -> list[dict]:
        """The lists a visitor was shown, oldest first, in plain fields."""
        shown = self.session.scalars(
            select(RecommendationImpression)
            .where(RecommendationImpression.user_id == visitor_id)
            .order_by(RecommendationImpression.shown_at, RecommendationImpression.id)
        )
        return [
            {
                "list": row.list_name,
                "kind": row.item_kind,
                "items": [item_id for item_id, _ in json.loads(row.items)],
                "at": as_utc(row.shown_at).isoformat(),
            }
            for row in shown
        ]

    def forget(self, visitor_id: str) -> int:
        return self.session.execute(
            delete(RecommendationImpression).where(
                RecommendationImpression.user_id == visitor_id
            )
        ).rowcount

    def stats(self, visitor_id: str) -> dict:
        """Recommendations shown to a visitor, clicked (clicks naming a list they
        were shown) and dismissed, and the click-through rate."""
        shown = self.session.scalar(
            select(
                func.coalesce(func.sum(RecommendationImpression.item_count), 0)
            ).where(RecommendationImpression.user_id == visitor_id)
        )
        dismissed = self.session.scalar(
            select(func.count()).where(
                UserInteraction.user_id == visitor_id,
                UserInteraction.interaction_type == "not_interested",
            )
        )
        clicked = len(recommended_clicks(self.session, visitor_id=visitor_id))
        return {
            "shown": shown,
            "clicked": clicked,
            "dismissed": dismissed,
            "click_through_rate": round(clicked / shown, 4) if shown else None,
        }
