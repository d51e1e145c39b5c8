"""The facade of the personalization engine: what routes, webhooks and commands
call. It wires the `personalization` package for the app, registers it in
`init_app`, and owns the transaction: every method that writes commits before it
returns, or rolls back and re-raises; nothing inside the package commits.

    routes.py, webhooks.py, commands.py
        -> personalization_system (this facade)
            -> personalization/* (identity, ingest, statistics, recommenders, ...)
                -> models (the database), personalize_client (AWS)
"""

import atexit
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime

from flask import Flask, current_app

from models import db, utcnow
from personalization.aggregation import Aggregation
from personalization.consultations import Consultations, Contact, as_record
from personalization.dashboard import Dashboard
from personalization.events import (
    ExternalEvent,
    Interaction,
    ItemKey,
    VisitorInteraction,
)
from personalization.experiment import CONTROL, Experiment, ExperimentReport
from personalization.identity import Identity
from personalization.impressions import Impressions
from personalization.ingest import TRACKER, ExternalResult, Ingest
from personalization.items import Items
from personalization.neighbours import ProcedureNeighbours, with_neighbours
from personalization.outbox import Outbox
from personalization.page_buffer import PageBuffer
from personalization.personalize import with_user_campaign
from personalization.preferences import Preferences
from personalization.privacy import Privacy
from personalization.profiles import Profiles, VisitorProfile, anonymous
from personalization.ranking import HomeSections, Ranking, Sections
from personalization.recommenders import (
    HYBRID,
    PersonalizeAdapter,
    Recommenders,
    build_recommenders,
    with_personalize,
)
from personalization.rejections import Rejections
from personalization.retention import Retention
from personalization.settings import Settings
from personalization.statistics import Affinity, CoVisitation, Popularity
from personalization_maintenance import Maintenance
from personalize_client import PersonalizeClient
from search import result_categories

log = logging.getLogger(__name__)

EXTENSION = "personalization"


class PersonalizationSystem(Maintenance):
    """The engine, wired over one database session, with its transactions."""

    def __init__(
        self,
        settings: Settings,
        session,
        fingerprint_key: str,
        personalize: PersonalizeAdapter | None = None,
        stream_events: bool = False,
        forget_in_personalize: bool = False,
        search_categories: Callable[[str], list[int]] = result_categories,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.settings = settings
        self.session = session
        self.identity = Identity(fingerprint_key)
        self.items = Items(session)
        self.affinity = Affinity(session, settings, clock)
        self.popularity = Popularity(session, settings, clock)
        self.covisitation = CoVisitation(session, settings)
        self.preferences = Preferences(session, clock)
        self.profiles = Profiles(
            session, settings, self.affinity, self.preferences, clock
        )
        self.neighbours = ProcedureNeighbours(session, settings, self.popularity)
        self.recommenders = wire_recommenders(self, personalize)
        self.sections = Sections(
            self.items, self.recommenders.served, settings.max_per_category
        )
        self.outbox = Outbox(session, settings)
        self.ingest = Ingest(
            session,
            settings,
            self.identity,
            self.items,
            self.outbox if stream_events else None,
            search_categories,
            clock,
        )
        self.retention = Retention(session, settings, self.affinity)
        self.consultations = Consultations(session, clock)
        self.impressions = Impressions(session, clock)
        self.rejections = Rejections(session, clock)
        self.experiment = Experiment(session, settings, clock)
        self.dashboard = Dashboard(session, settings, clock)
        self.privacy = Privacy(
            session,
            settings,
            self.items,
            self.consultations,
            self.impressions,
            self.preferences,
            self.experiment,
            self.outbox if forget_in_personalize else None,
        )
        self.aggregation = Aggregation(
            session,
            settings,
            self.profiles,
            (self.affinity, self.popularity, self.covisitation),
            self.ingest.category_shares,
            self.privacy.erased_among,
            clock,
        )
        # Fold what a request logs into the statistics before it answers: when
        # no background aggregator runs (AGGREGATION_INTERVAL_SECONDS=0, tests,
        # the offline evaluation). init_app turns it off when one does.
        self.aggregate_inline = True
        # Page views without an item and impressions, held until the background
        # aggregator's next run when one runs (see page_buffer.py).
        self.page_buffer = PageBuffer(settings.page_buffer_rows)
        self.clock = clock

    @contextmanager
    def reading(self):
        """End the read transaction however the block ends: no snapshot (or, on
        PostgreSQL, idle transaction) is held until the next request."""
        try:
            yield
        finally:
            self.session.rollback()

    @contextmanager
    def transaction(self):
        """Commit what the block did, or roll it back and re-raise."""
        try:
            yield
            self.session.commit()
        except BaseException:
            self.session.rollback()
            raise

    # Identity

    def address_key(self, address: str | None) -> str:
        """A keyed hash of a client address: rate limits, never the address."""
        return self.identity.address_key(address)

    def amplitude_alias(self, visitor_id: str) -> str:
        """What a page hands Amplitude's SDK for this visitor: their id, signed."""
        return self.identity.alias(visitor_id)

    # Tracking

    def validate_events(self, raw_events: list) -> tuple[list[Interaction], list]:
        """Split tracker events into valid interactions and rejections (index,
        error, reason); the rejections are counted per reason (committed)."""
        valid, rejected = self.ingest.validate(raw_events)
        if rejected:
            with self.transaction():
                self.rejections.count(Counter((TRACKER, r["reason"]) for r in rejected))
        return valid, rejected

    def record_interactions(
        self,
        visitor_id: str,
        session_id: str,
        interactions: list[Interaction],
        now: datetime | None = None,
    ) -> int:
        """Store one visitor's validated interactions; committed on return."""
        return self.record(
            [VisitorInteraction(visitor_id, session_id, i) for i in interactions], now
        )

    def record(self, entries: list[VisitorInteraction], now=None) -> int:
        """Store interactions of any visitors; committed (durable) on return, and
        in the statistics within AGGREGATION_INTERVAL_SECONDS (see aggregate)."""
        with self.transaction():
            recorded = self.ingest.record(entries, now)
        self.after_logging()
        return recorded

    def record_page(
        self,
        visitor_id: str,
        session_id: str,
        view: Interaction | None,
        impressions: tuple[str, dict[str, Ranking | None], str | None] | None,
    ) -> None:
        """One page's view and lists shown (request id, {list name: Ranking},
        experiment arm) for a tracked visitor. What rankings read (the view of
        an item) is committed on return; the rest is too, or, when a background
        aggregator runs, held until its next run (see page_buffer.py).

        For after the page is rendered: the catalog rows it loaded are let go
        first, rather than expired one attribute at a time by the commit (a
        fifth of this write's time, for objects nothing reads again).
        """
        if self.holds_pages:
            view, impressions = self.hold_page(
                visitor_id, session_id, view, impressions
            )
            if not view and not impressions:
                return
        self.session.expunge_all()
        with self.transaction():
            if view:
                self.ingest.record([VisitorInteraction(visitor_id, session_id, view)])
            if impressions:
                self.impressions.record(visitor_id, *impressions)
        if view:
            self.after_logging()

    def record_external(
        self,
        events: list[ExternalEvent],
        received_at: datetime,
        skipped: Counter | None = None,
    ) -> ExternalResult:
        """Record a webhook's events with their de-duplication keys, and count
        what was refused ({(source, reason): events} skipped before, and what
        named no item or came twice), in one transaction: a failure stores
        nothing, and a retry is not counted twice."""
        with self.transaction():
            result = self.ingest.record_external(events, received_at)
            self.rejections.count((skipped or Counter()) + result.refused)
        self.after_logging()
        return result

    # Pages read the visitor's own writes

    def profile(self, visitor_id: str | None) -> VisitorProfile:
        """What rankings know of a visitor, their own latest interactions
        included (read your writes): one query when this process has their
        profile, after aggregating first if some of theirs wait for it."""
        if not visitor_id:
            return anonymous()
        state = self.profiles.state(visitor_id)
        if state.pending:
            self.aggregate(visitor_id)  # their rows move into the log: a new state
            state = self.profiles.state(visitor_id)
        return self.profiles.load(visitor_id, state)

    def catch_up(self, visitor_id: str) -> None:
        """Aggregate the visitor's own interactions first if they wait in the
        inbox, so what is read of them is whole (one lookup when none wait)."""
        self.aggregate(visitor_id)

    # Rankings

    def home_sections(
        self,
        visitor_id: str | None,
        sizes: dict[str, int],
        recently_viewed: int = 0,
        popular_in_city: int = 0,
        arm: str | None = None,
    ) -> HomeSections:
        """The home page's sections for one visitor ({"category": 6, ...}); the
        experiment's control arm gets popular lists (see Sections.home)."""
        return self.sections.home(
            self.profile(visitor_id),
            sizes,
            recently_viewed,
            popular_in_city,
            held_out=self.recommenders.popular if arm == CONTROL else None,
        )

    def recommend(
        self,
        kind: str,
        visitor_id: str | None,
        limit: int,
        algorithm: str = HYBRID,
    ) -> Ranking:
        """One kind of item ranked for a visitor (None: popular) by one of the
        ALGORITHMS (the served one by default)."""
        return self.sections.section(
            self.profile(visitor_id),
            kind,
            limit,
            recommender=self.recommenders.for_algorithm(algorithm),
        )

    def similar(self, item: ItemKey, limit: int, algorithm: str = HYBRID) -> Ranking:
        """Items like this one, by one of the ALGORITHMS."""
        return self.sections.similar(
            item, limit, self.recommenders.for_algorithm(algorithm)
        )

    # The A/B holdout

    def experiment_arm(self, visitor_id: str) -> str:
        """The visitor's arm, assigned and stored on first sight (committed)."""
        with self.transaction():
            return self.experiment.arm(visitor_id)

    def experiment_report(self, days: int = 30) -> ExperimentReport:
        """How the arms compare over visitors assigned in the last `days` days."""
        with self.reading():
            return self.experiment.report(days)

    def dashboard_page(self, name: str, days: int) -> dict:
        """One admin dashboard page's figures (personalization/dashboard.py
        PAGES) over the last `days` days."""
        with self.reading():
            return self.dashboard.page(name, days, self.regional_match_rates)

    def recommendation_stats(self, visitor_id: str) -> dict:
        """What a visitor was recommended, clicked and dismissed."""
        with self.reading():
            return self.impressions.stats(visitor_id)

    # Consultation requests (personal data: never streamed anywhere)

    def request_consultation(
        self,
        visitor_id: str | None,
        tracked_session: str | None,
        subject: ItemKey,
        contact: Contact,
    ) -> str:
        """Store a consultation request and, for a tracked visitor, their
        form_submit on its subject (the strongest signal), in one transaction;
        return the request's reference."""
        with self.transaction():
            request = self.consultations.create(visitor_id, subject, contact)
            if visitor_id and tracked_session:
                submit = Interaction("form_submit", subject, {"form": "consultation"})
                self.ingest.record(
                    [VisitorInteraction(visitor_id, tracked_session, submit)], None
                )
        self.after_logging()
        return request.reference

    def consultation(self, reference: str):
        """One request by its reference (the confirmation page), or None."""
        return self.consultations.by_reference(reference)

    def leads(self, since: datetime | None = None) -> list[dict]:
        """Every consultation request (made since a moment), as plain records."""
        with self.reading():
            return [as_record(r) for r in self.consultations.since(since)]

    # What a visitor chose

    def visitor_city(self, visitor_id: str | None) -> str | None:
        """The city the visitor chose to see doctors in, if any."""
        return self.preferences.city(visitor_id)

    def choose_city(self, visitor_id: str, city: str | None) -> None:
        """Remember the visitor's city (None: every city); committed on return."""
        with self.transaction():
            self.preferences.choose_city(visitor_id, city)

    # One visitor's own data (privacy page, "download my data", "forget me")

    def visitor_summary(self, visitor_id: str) -> dict:
        """How much is stored about a visitor, and their strongest interests."""
        self.store_held_pages()
        self.catch_up(visitor_id)
        with self.reading():
            return self.privacy.summary(visitor_id)

    def visitor_data(self, visitor_id: str) -> dict:
        """Everything stored about a visitor, for them to download."""
        self.store_held_pages()
        self.catch_up(visitor_id)
        with self.reading():
            return self.privacy.download(visitor_id, self.clock())

    def forget_visitor(self, visitor_id: str) -> dict[str, int]:
        """Erase everything stored under this visitor id; say what went."""
        with self.transaction():
            # No aggregation in flight may count the visitor's rows again.
            self.aggregation.lock()
            forgotten = self.privacy.forget(visitor_id)
        self.profiles.forget_cached(visitor_id)
        return forgotten


def wire_recommenders(
    system: PersonalizationSystem, personalize: PersonalizeAdapter | None
) -> Recommenders:
    """Every recommender of a system, over its statistics: the local ones, the
    user-personalization campaign when configured, and the item neighbours."""
    settings = system.settings
    built = build_recommenders(
        settings, system.items, system.popularity, system.covisitation
    )
    built = with_neighbours(built, system.neighbours, settings)
    built = with_personalize(
        built, personalize, system.items, settings.rerank_candidates
    )
    return with_user_campaign(built, personalize, system.items)


# The app's system


def init_app(app: Flask) -> PersonalizationSystem:
    """Build the app's system from its configuration and register it.

    Settings are read and checked here, once: a bad value stops start-up with a
    message naming it. With AWS_PERSONALIZE_ENABLED, the Personalize adapter
    re-ranks and, with a tracking id, events stream from the outbox.
    """
    config = app.config
    personalize = None
    if config["AWS_PERSONALIZE_ENABLED"]:
        personalize = PersonalizeClient.from_config(config)
        app.extensions["personalize_client"] = personalize
        app.before_request(personalize.start_page)
        app.teardown_request(personalize.end_page)
    streaming = bool(personalize and personalize.tracking_id)
    system = PersonalizationSystem(
        Settings.from_config(config),
        db.session,
        config["FINGERPRINT_SECRET"],
        personalize=personalize,
        stream_events=streaming,
        forget_in_personalize=bool(personalize and personalize.deletion),
    )
    app.extensions[EXTENSION] = system
    if system.settings.aggregation_interval_seconds > 0 and not app.testing:
        system.aggregate_inline = False
        app.before_request(aggregator_starter(app, system))
    if streaming and config["AWS_PERSONALIZE_SYNC_INTERVAL"] > 0 and not app.testing:
        start_event_sync(app, system, personalize)
    return system


def current_system() -> PersonalizationSystem:
    """The system of the app handling this request or command."""
    return current_app.extensions[EXTENSION]


def aggregator_starter(app: Flask, system: PersonalizationSystem) -> Callable:
    """A before_request hook that starts this process's aggregator on its first
    request: in each server worker (after gunicorn forks it), never in a command
    (their rows wait, durable, for a server or `flask personalization
    aggregate`). It folds the log into the statistics every
    AGGREGATION_INTERVAL_SECONDS; the aggregation lock makes workers take turns."""
    starting, started = threading.Lock(), []

    def start() -> None:
        with starting:
            if not started:
                interval = system.settings.aggregation_interval_seconds
                repeat_in_background(app, interval, "aggregator", system.upkeep)
                # A worker that stops (a restart, a deploy) stores what it holds.
                atexit.register(
                    in_app_context, app, system.store_held_pages, "storing pages"
                )
                started.append(True)

    return start


def start_event_sync(
    app: Flask, system: PersonalizationSystem, personalize: PersonalizeClient
) -> None:
    """Deliver queued events to Personalize in the background, every few seconds.

    Each worker runs one; claims in the outbox keep them from sending twice.
    """

    def deliver() -> None:
        result = system.sync_personalize_events(personalize)
        if result["sent"] or result["failed"]:
            log.info("Personalize event sync: %s", result)

    repeat_in_background(
        app, app.config["AWS_PERSONALIZE_SYNC_INTERVAL"], "personalize-sync", deliver
    )


def in_app_context(app: Flask, job: Callable[[], object], name: str) -> None:
    """Run `job` in the app's context; log, rather than raise, any failure."""
    try:
        with app.app_context():
            job()
    except Exception:  # a background job must survive anything, and say so
        log.exception("%s failed", name)


def repeat_in_background(
    app: Flask, interval: float, name: str, job: Callable[[], object]
) -> None:
    """Run `job` in the app's context every `interval` seconds, on a daemon
    thread (a greenlet under gevent) that survives, and logs, any failure."""

    def forever() -> None:
        while True:
            time.sleep(interval)
            in_app_context(app, job, name)

    threading.Thread(target=forever, name=name, daemon=True).start()
