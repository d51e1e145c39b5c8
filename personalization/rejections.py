"""Events refused, counted per day, source and reason, for the admin dashboard's
data quality page (personalization/dashboard.py reads them); telemetry.py counts
the same per process for Prometheus. Counts only: nothing says who sent an event."""

from collections.abc import Callable, Mapping
from datetime import datetime

from models import RejectedEventCount, upsert_rows
from personalization import telemetry


class Rejections:
    def __init__(self, session, clock: Callable[[], datetime]):
        self.session = session
        self.clock = clock

    def count(self, refused: Mapping[tuple[str, str], int]) -> None:
        """Add {(source, reason): events} to today's counts, in the caller's
        transaction, and to the process's metrics."""
        today = self.clock().date()
        rows = [
            {"day": today, "source": source, "reason": reason, "count": count}
            for (source, reason), count in sorted(refused.items())
            if count
        ]
        table = RejectedEventCount.__table__
        upsert_rows(
            self.session,
            table,
            rows,
            [table.c.day, table.c.source, table.c.reason],
            lambda proposed: {"count": table.c.count + proposed.count},
        )
        for (source, reason), count in refused.items():
            telemetry.rejected(source, reason, count)
