"""The facade's maintenance half: the jobs that commands and background
workers run (aggregation, statistics rebuilds, Personalize delivery, cleanup,
dataset export, evaluation). PersonalizationSystem inherits it; like the rest of
the facade, each method owns its transactions.

It works on the parts PersonalizationSystem wires: session, settings, clock,
aggregation, popularity, covisitation, neighbours, outbox, retention, profiles,
preferences, sections, recommenders, ingest, impressions, privacy, page_buffer,
and its reading() and transaction().
"""

import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from models import refresh_planner_statistics, utcnow
from personalization import evaluation
from personalization.aggregation import has_effect
from personalization.events import Interaction, VisitorInteraction
from personalization.export import export_datasets, sync_catalog
from personalization.outbox import Backlog
from personalization.ranking import Ranking
from personalization.regions import CityRates, match_rates
from personalization.retention import RetentionTask
from personalize_client import PersonalizeClient

log = logging.getLogger(__name__)

# What a refresh rebuilds, and the log it reads (often just bulk-loaded).
REFRESHED_TABLES = (
    "user_interactions",
    "item_popularity",
    "procedure_covisitation",
    "procedure_neighbours",
)


class Maintenance:
    """Jobs of the personalization system (see the module docstring)."""

    # Aggregation: the log folded into the statistics

    def after_logging(self) -> None:
        """Fold what was just logged into the statistics, unless a background
        aggregator does it. What was logged is committed already: a failure
        here leaves it pending for the next run, and the caller's answer
        stands."""
        if not self.aggregate_inline:
            return
        try:
            self.aggregate()
        except SQLAlchemyError as error:
            log.warning("aggregation failed, rows wait: %s", error.__class__.__name__)

    def aggregate(self, visitor_id: str | None = None) -> int:
        """Fold every pending log row (or only one visitor's) into affinities,
        popularity and co-visitation, a batch per transaction; say how many
        rows."""
        folded = 0
        while True:
            with self.transaction():
                batch = self.aggregation.drain_batch(visitor_id)
            if not batch:
                return folded
            folded += batch

    def upkeep(self) -> None:
        """What a server process's background loop does every
        AGGREGATION_INTERVAL_SECONDS: store the pages it holds, then aggregate."""
        self.store_held_pages()
        self.aggregate()

    # Pages held between aggregator runs (page_buffer.py)

    @property
    def holds_pages(self) -> bool:
        return not self.aggregate_inline and self.page_buffer.limit > 0

    def hold_page(
        self,
        visitor_id: str,
        session_id: str,
        view: Interaction | None,
        impressions: tuple[str, dict[str, Ranking | None], str | None] | None,
    ) -> tuple[Interaction | None, tuple | None]:
        """Hold what no ranking reads of a page, as of now: a view without an
        item, and the lists shown, unless events stream to Personalize (the
        event of a click on a card takes the card's list from the database at
        once: Outbox.queue). Return what the caller stores now: the view of an
        item, and those lists. Store everything held when the buffer is full."""
        held_views = []
        if view and not has_effect(view):
            held = replace(view, occurred_at=view.occurred_at or self.clock())
            held_views.append(VisitorInteraction(visitor_id, session_id, held))
            view = None
        shown = []
        if impressions and not self.ingest.outbox:
            shown = self.impressions.rows(visitor_id, *impressions)
            impressions = None
        if self.page_buffer.add(held_views, shown):
            self.store_held_pages()
        return view, impressions

    def store_held_pages(self) -> int:
        """Store the page views and impressions this process holds (see
        page_buffer.py) in one transaction, except those of visitors erased
        since; say how many rows were held. On failure they are held again."""
        views, shown = self.page_buffer.take()
        if not views and not shown:
            return 0
        try:
            with self.transaction():
                # An erasure commits before this reads erased_visitors, or
                # waits until this has committed (and then deletes the rows).
                self.aggregation.lock()
                erased = self.privacy.erased_among(
                    {view.visitor_id for view in views}
                    | {row["user_id"] for row in shown}
                )
                self.ingest.record([v for v in views if v.visitor_id not in erased])
                self.impressions.store(
                    [row for row in shown if row["user_id"] not in erased]
                )
        except Exception:
            dropped = self.page_buffer.put_back(views, shown)
            if dropped:
                log.warning("%d held page rows dropped: the buffer is full", dropped)
            raise
        return len(views) + len(shown)

    # Statistics, Personalize, cleanup, datasets, evaluation

    def refresh_statistics(self, now=None, progress=None) -> dict[str, int]:
        """Rebuild popularity, co-visitation and item neighbours from the log as
        of `now`, then refresh the planner's statistics of what pages read; the
        neighbours report (visitors done, in all) to `progress`."""
        now = now or self.clock()
        self.aggregate()
        with self.transaction():
            self.aggregation.lock()  # rows logged since are left to the aggregator
            self.popularity.rebuild(now)
            self.covisitation.rebuild(now)
            self.neighbours.rebuild(now, progress)
        with self.transaction():
            refresh_planner_statistics(self.session, REFRESHED_TABLES)
        self.popularity.clear_cache()
        return {
            "item_popularity": self.popularity.size(),
            "procedure_covisitation": self.covisitation.size(),
            "procedure_neighbours": self.neighbours.size(),
        }

    def sync_personalize_events(
        self, client: PersonalizeClient, max_events: int = 1000, now=None
    ) -> dict[str, int]:
        """Stream queued interactions to Personalize, each accepted call committed
        on its own (see Outbox.deliver); say how many went and how many wait."""
        return self.outbox.deliver(
            client, max_events, now or utcnow(), self.transaction, utcnow
        )

    def sync_personalize_catalog(self, client, users_since=None) -> dict[str, int]:
        """Send the catalog and recently active visitors to Personalize."""
        with self.reading():
            return sync_catalog(self.session, client, users_since)

    def outbox_backlog(self) -> Backlog:
        """Events waiting for Personalize, and dead letters (refused too often)."""
        with self.reading():
            return self.outbox.backlog()

    def retention_tasks(self, days: int, now: datetime) -> list[RetentionTask]:
        """What the cleanup deletes, table by table."""
        return self.retention.tasks(days, now)

    def count(self, task: RetentionTask) -> int:
        """How many rows a cleanup task would delete."""
        return self.retention.count(task)

    def delete_in_batches(self, task: RetentionTask, batch_size: int) -> Iterator[int]:
        """Delete a task's rows batch by batch, each in its own short transaction,
        so the site keeps serving; yield how many each batch deleted."""
        while True:
            with self.transaction():
                deleted = self.retention.delete_batch(task, batch_size)
            if not deleted:
                return
            yield deleted

    def export_datasets(self, output_dir: Path) -> dict[str, int]:
        """Write the Personalize dataset files; rows written per file."""
        with self.reading():
            return export_datasets(self.session, self.settings, output_dir)

    def evaluate(self, test: dict[str, set[int]], k: int, catalog_size: int) -> dict:
        """Score every recommender on a split's test visitors (see replay_system):
        each visitor's hidden procedure ids, by visitor id."""
        with self.reading():
            return evaluation.score_recommenders(
                self.recommenders.by_name(), self.profiles.load, test, k, catalog_size
            )

    # Regions

    def regional_match_rates(
        self, sample_size: int, k: int, seed: int = 0
    ) -> list[CityRates]:
        """Per chosen city: how often each procedure is in a sampled visitor's
        top k, as the home page ranks it."""
        with self.reading():
            return match_rates(
                self.preferences.visitors_by_city(),
                lambda visitor_id: self.sections.home_procedure_ids(
                    self.profiles.load(visitor_id), k
                ),
                sample_size,
                seed,
            )
