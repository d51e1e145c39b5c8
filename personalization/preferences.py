"""What a visitor chose for themselves: the city they look for doctors in. Kept
only for tracked visitors, never guessed from their address."""

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import delete, select

from models import VisitorPreference, dialect_insert


class Preferences:
    """Reads and keeps visitors' chosen cities."""

    def __init__(self, session, clock: Callable[[], datetime]):
        self.session = session
        self.clock = clock

    def city(self, visitor_id: str | None) -> str | None:
        """The city the visitor chose, if any."""
        if not visitor_id:
            return None
        return self.session.scalar(
            select(VisitorPreference.city).where(
                VisitorPreference.user_id == visitor_id
            )
        )

    def choose_city(self, visitor_id: str, city: str | None) -> None:
        """Remember the visitor's city; None forgets it ("all cities")."""
        if city is None:
            self.session.execute(
                delete(VisitorPreference).where(VisitorPreference.user_id == visitor_id)
            )
            return
        statement = dialect_insert(self.session, VisitorPreference).values(
            user_id=visitor_id, city=city, updated_at=self.clock()
        )
        self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[VisitorPreference.user_id],
                set_={"city": city, "updated_at": self.clock()},
            )
        )

    def visitors_by_city(self) -> dict[str, list[str]]:
        """Every visitor with a chosen city, grouped by it (ids sorted)."""
        rows = self.session.execute(
            select(VisitorPreference.city, VisitorPreference.user_id).order_by(
                VisitorPreference.city, VisitorPreference.user_id
            )
        )
        found: dict[str, list[str]] = {}
        for city, visitor_id in rows:
            found.setdefault(city, []).append(visitor_id)
        return found
