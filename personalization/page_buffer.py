"""What pages note that no ranking reads: page views without an item (the home
page, a search, a list) and the recommendation lists a page showed. A server
process holds them and stores them together, one insert per table, when its
aggregator runs (every AGGREGATION_INTERVAL_SECONDS), instead of a transaction
per page: the page write was most of what personalization cost a page
(BENCHMARKS.md).

What rankings do read (a view of a procedure, a doctor, a package or a
category) is never held: it is stored before the page answers, so the
visitor's next page knows it. Held rows are lost if the process is killed
(kill -9) before it stores them: at most one interval of page views and
impressions, never an event the tracker or a webhook was answered 202 for.
"""

import threading

from personalization.events import VisitorInteraction


class PageBuffer:
    """This process's held page views and impression rows (thread-safe)."""

    def __init__(self, limit: int):
        # Held rows (views and impressions together) that make a page store
        # them at once rather than wait for the next run.
        self.limit = limit
        self._lock = threading.Lock()
        self._views: list[VisitorInteraction] = []
        self._impressions: list[dict] = []

    def add(self, views: list[VisitorInteraction], impressions: list[dict]) -> bool:
        """Hold one page's rows; say whether the buffer is full."""
        with self._lock:
            self._views += views
            self._impressions += impressions
            return len(self._views) + len(self._impressions) >= self.limit

    def take(self) -> tuple[list[VisitorInteraction], list[dict]]:
        """Everything held, removed from the buffer."""
        with self._lock:
            views, impressions = self._views, self._impressions
            self._views, self._impressions = [], []
        return views, impressions

    def put_back(self, views: list[VisitorInteraction], impressions: list[dict]) -> int:
        """Hold again what a failed store took, ahead of what came since, up
        to `limit` rows (the newest kept) while the database is away; say how
        many were dropped."""
        with self._lock:
            self._views = views + self._views
            self._impressions = impressions + self._impressions
            excess = len(self._views) + len(self._impressions) - self.limit
            if excess <= 0:
                return 0
            dropped_views = min(excess, len(self._views))
            self._views = self._views[dropped_views:]
            self._impressions = self._impressions[excess - dropped_views :]
            return excess

    def __len__(self) -> int:
        with self._lock:
            return len(self._views) + len(self._impressions)
