"""Database tables: the catalog (categories, procedures, doctors, packages) and the
personalization log and affinities."""

import hashlib
import math
import sqlite3
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    ARRAY,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    cast,
    event,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    aliased,
    mapped_column,
    relationship,
)
from sqlalchemy.sql.functions import FunctionElement

# Stable constraint names, so migrations can name what they drop and SQLite
# batch migrations can rebuild tables.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)


def utcnow() -> datetime:
    """Return the current time, timezone-aware, for column defaults."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Treat naive datetimes (SQLite returns them) as the UTC they were written in."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@event.listens_for(Engine, "connect")
def tune_sqlite(dbapi_connection, _connection_record) -> None:
    """Let SQLite serve concurrent requests: WAL, a busy timeout, enforced FKs."""
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # Decay and similarity need power() and sqrt(); not every SQLite build has
    # its math functions.
    dbapi_connection.create_function(
        "power", 2, null_safe(math.pow), deterministic=True
    )
    dbapi_connection.create_function(
        "sqrt", 1, null_safe(math.sqrt), deterministic=True
    )


def null_safe(function):
    """Wrap a math function to return NULL for NULL input, as SQL functions do."""

    def wrapper(*args):
        return None if any(arg is None for arg in args) else function(*args)

    return wrapper


doctor_procedures = Table(
    "doctor_procedures",
    Base.metadata,
    Column(
        "doctor_id",
        ForeignKey("doctors.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "procedure_id",
        ForeignKey("procedures.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
)

package_procedures = Table(
    "package_procedures",
    Base.metadata,
    Column(
        "package_id",
        ForeignKey("packages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "procedure_id",
        ForeignKey("procedures.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
)


class Category(db.Model):
    __tablename__ = "categories"
    # The item kind its ItemKey, tracker attributes and URLs use.
    kind = "category"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    slug: Mapped[str] = mapped_column(String(120), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )

    procedures: Mapped[list["Procedure"]] = relationship(
        back_populates="category", order_by="Procedure.name"
    )

    @property
    def display_name(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Category {self.slug}>"


class Procedure(db.Model):
    __tablename__ = "procedures"
    # The item kind its ItemKey, tracker attributes and URLs use.
    kind = "procedure"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(150), unique=True)
    slug: Mapped[str] = mapped_column(String(170), unique=True)
    category_id: Mapped[int] = mapped_column(
        ForeignKey("categories.id", ondelete="RESTRICT"), index=True
    )
    short_description: Mapped[str] = mapped_column(Text, default="")
    # Typical price range in whole US dollars.
    price_min: Mapped[int] = mapped_column(Integer)
    price_max: Mapped[int] = mapped_column(Integer)
    recovery_time: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )

    category: Mapped[Category] = relationship(back_populates="procedures")
    doctors: Mapped[list["Doctor"]] = relationship(
        secondary=doctor_procedures,
        back_populates="procedures",
        order_by="(Doctor.rating.desc(), Doctor.name)",
    )
    packages: Mapped[list["Package"]] = relationship(
        secondary=package_procedures,
        back_populates="procedures",
        order_by="Package.price",
    )

    @property
    def display_name(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Procedure {self.slug}>"


class Doctor(db.Model):
    __tablename__ = "doctors"
    # The item kind its ItemKey, tracker attributes and URLs use.
    kind = "doctor"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(150))
    slug: Mapped[str] = mapped_column(String(170), unique=True)
    title: Mapped[str] = mapped_column(String(150))
    city: Mapped[str] = mapped_column(String(100), index=True)
    rating: Mapped[Decimal] = mapped_column(Numeric(2, 1))
    review_count: Mapped[int] = mapped_column(Integer, default=0)
    bio: Mapped[str] = mapped_column(Text, default="")
    # "MD", "DO", "NP", "PA-C", ...: only physicians are addressed as "Dr.".
    credentials: Mapped[str] = mapped_column(
        String(20), default="MD", server_default="MD"
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )

    procedures: Mapped[list[Procedure]] = relationship(
        secondary=doctor_procedures,
        back_populates="doctors",
        order_by="Procedure.name",
    )
    packages: Mapped[list["Package"]] = relationship(
        back_populates="doctor", order_by="Package.price"
    )

    @property
    def is_physician(self) -> bool:
        return self.credentials in PHYSICIAN_CREDENTIALS

    @property
    def display_name(self) -> str:
        """ "Dr. Maya Chen" for a physician, "Maya Chen, NP" for anyone else."""
        if self.is_physician:
            return f"Dr. {self.name}"
        return f"{self.name}, {self.credentials}"

    @property
    def initials(self) -> str:
        """Up to two initials, for the avatar a doctor without a photo gets."""
        words = [word for word in self.name.split() if word[:1].isalpha()]
        return "".join(word[0].upper() for word in words[:1] + words[1:][-1:])

    def __repr__(self) -> str:
        return f"<Doctor {self.slug}>"


# Credentials of the people addressed as "Dr." (nurse practitioners and
# physician assistants are not).
PHYSICIAN_CREDENTIALS = frozenset({"MD", "DO", "MBBS"})
# "Top rated" is a Bayesian average: every doctor's reviews plus this many
# imaginary reviews at the catalog's mean, so 5.0 from 2 reviews does not beat
# 4.8 from 300.
RATING_PRIOR_REVIEWS = 25


@cache
def doctor_rating_score():
    """SQL: a doctor's Bayesian average rating (see RATING_PRIOR_REVIEWS).

    Built once: the expression is the same in every statement, and composing it
    cost more than running it."""
    others = aliased(Doctor)
    mean = (
        select(
            func.coalesce(
                func.sum(cast(others.rating, Float) * others.review_count)
                / func.nullif(func.sum(others.review_count), 0),
                0.0,
            )
        )
        .correlate(None)
        .scalar_subquery()
    )
    return (
        cast(Doctor.rating, Float) * Doctor.review_count + mean * RATING_PRIOR_REVIEWS
    ) / (Doctor.review_count + RATING_PRIOR_REVIEWS)


@cache
def top_rated_order() -> tuple:
    """ORDER BY for "top rated" doctor lists: Bayesian average, then name."""
    return (doctor_rating_score().desc(), Doctor.name, Doctor.id)


class Package(db.Model):
    __tablename__ = "packages"
    # The item kind its ItemKey, tracker attributes and URLs use.
    kind = "package"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(150))
    slug: Mapped[str] = mapped_column(String(170), unique=True)
    doctor_id: Mapped[int] = mapped_column(
        ForeignKey("doctors.id", ondelete="CASCADE"), index=True
    )
    description: Mapped[str] = mapped_column(Text, default="")
    # Bundle price in whole US dollars.
    price: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )

    doctor: Mapped[Doctor] = relationship(back_populates="packages")
    procedures: Mapped[list[Procedure]] = relationship(
        secondary=package_procedures,
        back_populates="packages",
        order_by="Procedure.name",
    )

    @property
    def display_name(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Package {self.slug}>"


class UserInteraction(db.Model):
    """One thing an anonymous visitor did: a view, click, search or form submit."""

    __tablename__ = "user_interactions"
    # A visitor's recent history is read on every personalized page: keep it an
    # index range scan however long the log grows. Its own index leaves page
    # views out, so a visitor's many page views never slow it down. Lookups by
    # visitor alone (erasure, download) use (user_id, timestamp): no index on
    # user_id by itself, which every logged row would pay to keep up.
    __table_args__ = (
        Index("ix_user_interactions_user_id_timestamp", "user_id", "timestamp"),
        Index(
            "ix_user_interactions_item_history",
            "user_id",
            "timestamp",
            postgresql_where=text("target_id IS NOT NULL"),
            sqlite_where=text("target_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32))
    session_id: Mapped[str] = mapped_column(String(64))
    interaction_type: Mapped[str] = mapped_column(String(50), index=True)
    target_type: Mapped[str | None] = mapped_column(String(50))
    target_id: Mapped[int | None] = mapped_column(Integer)
    # JSON text; kept as TEXT as the product's schema gives it.
    extra_data: Mapped[str | None] = mapped_column(Text)
    timestamp: Mapped[datetime] = mapped_column(
        DateTime(timezone=True),
        default=utcnow,
        server_default=func.now(),
        index=True,
    )


class PendingInteraction(db.Model):
    """The inbox of interactions that change a statistic: requests append here
    (one insert, committed before they answer); the aggregator
    (personalization/aggregation.py) moves rows into user_interactions and folds
    them into affinities, popularity and co-visitation, in one transaction, so
    each counts exactly once. Bare page views change no statistic: they go to
    the log directly. The columns are the log's."""

    __tablename__ = "pending_interactions"

    id: Mapped[int] = mapped_column(primary_key=True)
    # "Has this visitor anything waiting?" on every page, from a small index.
    user_id: Mapped[str] = mapped_column(String(32), index=True)
    session_id: Mapped[str] = mapped_column(String(64))
    interaction_type: Mapped[str] = mapped_column(String(50))
    target_type: Mapped[str | None] = mapped_column(String(50))
    target_id: Mapped[int | None] = mapped_column(Integer)
    extra_data: Mapped[str | None] = mapped_column(Text)
    timestamp: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class UserCategoryAffinity(db.Model):
    """How interested one visitor is in one category, decaying over time."""

    __tablename__ = "user_category_affinity"
    __table_args__ = (
        UniqueConstraint("user_id", "category_id"),
        Index("ix_user_category_affinity_user_id", "user_id"),
        Index("ix_user_category_affinity_category_id", "category_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32))
    category_id: Mapped[int] = mapped_column(
        ForeignKey("categories.id", ondelete="CASCADE")
    )
    affinity_score: Mapped[float] = mapped_column(
        Float, default=0.0, server_default="0"
    )
    last_updated: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class ItemPopularity(db.Model):
    """Precomputed, time-decayed interest in one catalog item (or category).

    Kept up to date by every recorded interaction and rebuilt by
    `flask personalization refresh`, so rankings never scan the interaction log.
    """

    __tablename__ = "item_popularity"

    target_type: Mapped[str] = mapped_column(String(50), primary_key=True)
    target_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Sum of interaction weights, each decayed by POPULARITY_DECAY_RATE per day.
    score: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # Distinct visitors, for normalizing co-visitation counts.
    visitors: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_updated: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class ProcedureCovisitation(db.Model):
    """How many visitors interacted with both of two procedures."""

    __tablename__ = "procedure_covisitation"

    procedure_id: Mapped[int] = mapped_column(
        ForeignKey("procedures.id", ondelete="CASCADE"), primary_key=True
    )
    other_id: Mapped[int] = mapped_column(
        ForeignKey("procedures.id", ondelete="CASCADE"), primary_key=True
    )
    visitors: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ProcedureNeighbour(db.Model):
    """A procedure's nearest neighbours by who interacted with both: EASE
    item-item weights, the best NEIGHBOURS_PER_ITEM per procedure, rebuilt by
    `flask personalization refresh` (personalization/neighbours.py)."""

    __tablename__ = "procedure_neighbours"

    procedure_id: Mapped[int] = mapped_column(
        ForeignKey("procedures.id", ondelete="CASCADE"), primary_key=True
    )
    neighbour_id: Mapped[int] = mapped_column(
        ForeignKey("procedures.id", ondelete="CASCADE"), primary_key=True
    )
    similarity: Mapped[float] = mapped_column(Float)


class PersonalizeOutbox(db.Model):
    """An interaction waiting to be streamed to AWS Personalize (PutEvents).

    A row is marked sent only after AWS accepted it, so an outage loses nothing.
    """

    __tablename__ = "personalize_outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32))
    session_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(50))
    item_id: Mapped[str] = mapped_column(String(64))
    event_value: Mapped[float] = mapped_column(Float)
    # JSON list of the item ids shown with the event (Personalize "impression").
    impression: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A sync run claims rows with a token, so parallel workers never send one twice.
    claim_token: Mapped[str | None] = mapped_column(String(32), index=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), index=True
    )


class ConsultationRequest(db.Model):
    """A visitor's request to be contacted for a consultation about a doctor,
    procedure or package. Personal data: never sent to Personalize or Amplitude,
    in "download my data", erased by "forget me" and by the retention cleanup."""

    __tablename__ = "consultation_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Shown to the visitor on the confirmation page: what they quote to the
    # clinic, or to have a request without a visitor cookie erased.
    reference: Mapped[str] = mapped_column(String(16), unique=True)
    # The visitor cookie's id when the browser had one, else None.
    user_id: Mapped[str | None] = mapped_column(String(32), index=True)
    doctor_id: Mapped[int | None] = mapped_column(
        ForeignKey("doctors.id", ondelete="SET NULL"), index=True
    )
    procedure_id: Mapped[int | None] = mapped_column(
        ForeignKey("procedures.id", ondelete="SET NULL"), index=True
    )
    package_id: Mapped[int | None] = mapped_column(
        ForeignKey("packages.id", ondelete="SET NULL"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str | None] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(32))
    preferred_date: Mapped[date | None] = mapped_column(Date)
    message: Mapped[str] = mapped_column(Text, default="")
    consent_to_contact: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now(), index=True
    )

    doctor: Mapped[Doctor | None] = relationship()
    procedure: Mapped[Procedure | None] = relationship()
    package: Mapped[Package | None] = relationship()

    @property
    def subject(self):
        """What the request is about: the package, procedure or doctor."""
        return self.package or self.procedure or self.doctor


class VisitorPreference(db.Model):
    """What a visitor chose for themselves (never guessed, e.g. from their
    address): the city they filter doctors by. A regional signal for rankings."""

    __tablename__ = "visitor_preferences"

    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    city: Mapped[str] = mapped_column(String(100), index=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True),
        default=utcnow,
        onupdate=utcnow,
        server_default=func.now(),
        index=True,
    )


class RecommendationImpression(db.Model):
    """One recommendation list a visitor was shown: its items in order, what
    placed each, and where. One row per list keeps a page's cost to one insert;
    a click on one of its cards carries the list's id, so click-through is exact
    per list, source and position."""

    __tablename__ = "recommendation_impressions"

    # Random, in the page's links: a click names the list it came from.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), index=True)
    request_id: Mapped[str] = mapped_column(String(32))
    # Where it was shown: "home:procedure", "procedure:similar", "api:doctors", ...
    list_name: Mapped[str] = mapped_column(String(50))
    item_kind: Mapped[str] = mapped_column(String(50))
    # JSON: [[item id, source], ...] in the order shown (position 1 first).
    items: Mapped[str] = mapped_column(Text)
    # len(items): what reports sum in SQL without reading the JSON.
    item_count: Mapped[int] = mapped_column(Integer, server_default="0")
    # The experiment arm the visitor was in (None: no experiment running).
    arm: Mapped[str | None] = mapped_column(String(20))
    shown_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now(), index=True
    )


class ExperimentAssignment(db.Model):
    """The arm of the A/B holdout a visitor was put in, kept so they stay in it
    across visits even if the control share changes later."""

    __tablename__ = "experiment_assignments"

    experiment: Mapped[str] = mapped_column(String(50), primary_key=True)
    # Indexed on its own too: "forget me" deletes by visitor.
    user_id: Mapped[str] = mapped_column(String(32), primary_key=True, index=True)
    # "personalized" or "control" (see personalization/experiment.py).
    arm: Mapped[str] = mapped_column(String(20))
    # EXPERIMENT_CONTROL_SHARE when the visitor was assigned: the sample-ratio
    # check expects what each visitor's own odds were (None: the current share).
    control_share: Mapped[float | None] = mapped_column(Float)
    assigned_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now(), index=True
    )


class ErasedVisitor(db.Model):
    """A visitor erased ("forget me") in the last ERASED_VISITOR_HOURS: writes
    of theirs that were still on their way (a page's activity held in a worker
    until its next flush) are dropped when they arrive instead of stored. Holds
    the id and when, nothing else; the cleanup deletes it after that time."""

    __tablename__ = "erased_visitors"

    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now(), index=True
    )


class RejectedEventCount(db.Model):
    """How many events a source sent that were refused, per day and reason: the
    dashboard's data quality page. Counts only: nothing about who sent them."""

    __tablename__ = "rejected_event_counts"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    # "tracker" or "amplitude".
    source: Mapped[str] = mapped_column(String(20), primary_key=True)
    # A short code (see personalization/events.py REJECTION_REASONS).
    reason: Mapped[str] = mapped_column(String(40), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class AdminUser(db.Model):
    """Someone allowed into the /admin dashboard (`flask admin create`). Only a
    salted hash of the password is kept."""

    __tablename__ = "admin_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookEventKey(db.Model):
    """The de-duplication key of an event received by a webhook.

    A retried delivery carries the same key and changes nothing. Only a hash of
    the key is kept (never raw Amplitude ids), for 7 days.
    """

    __tablename__ = "webhook_event_keys"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now(), index=True
    )


# Portable SQL building blocks for the statements both databases must run alike.
# Compiled per dialect (SQLAlchemy's compiler extension), so a statement can be
# built once, without knowing the database, and run on either.


class greatest(FunctionElement):  # noqa: N801 (reads as the SQL function it is)
    """Two-argument maximum: GREATEST on PostgreSQL, scalar max() on SQLite."""

    type = Float()
    name = "greatest"
    inherit_cache = True


class least(FunctionElement):  # noqa: N801
    """Two-argument minimum: LEAST on PostgreSQL, scalar min() on SQLite."""

    type = Float()
    name = "least"
    inherit_cache = True


class days_between(FunctionElement):  # noqa: N801
    """Fractional days from the first timestamp to the second."""

    type = Float()
    name = "days_between"
    inherit_cache = True


@compiles(greatest)
@compiles(least)
def _function_by_its_name(element, compiler, **kw):
    return compiler.visit_function(element, **kw)


@compiles(greatest, "sqlite")
def _greatest_on_sqlite(element, compiler, **kw):
    return compiler.process(func.max(*element.clauses), **kw)


@compiles(least, "sqlite")
def _least_on_sqlite(element, compiler, **kw):
    return compiler.process(func.min(*element.clauses), **kw)


@compiles(days_between)
def _days_between_on_postgresql(element, compiler, **kw):
    start, end = element.clauses
    return compiler.process(func.extract("epoch", end - start) / 86400.0, **kw)


@compiles(days_between, "sqlite")
def _days_between_on_sqlite(element, compiler, **kw):
    start, end = element.clauses
    return compiler.process(func.julianday(end) - func.julianday(start), **kw)


def sql_time(moment: datetime):
    """Bind a timestamp so both databases compare it as one."""
    return literal(moment, DateTime(timezone=True))


def sql_days_since(column, now: datetime):
    """Days (fractional, never negative) from a timestamp column to `now`."""
    # Clock skew between workers must not make a decayed score grow.
    return greatest(days_between(column, sql_time(now)), 0.0)


def is_postgres(session) -> bool:
    """Tell whether a session talks to PostgreSQL (else SQLite)."""
    return session.get_bind().dialect.name == "postgresql"


def refresh_planner_statistics(session, tables: Iterable[str]) -> None:
    """PostgreSQL: ANALYZE these tables, so plans follow what a bulk load or a
    rebuild did (with stale statistics, a visitor's history read was planned
    as a scan: 24 ms instead of 0.65). SQLite plans from its indexes alone."""
    if is_postgres(session):
        for table in tables:
            session.execute(text(f"ANALYZE {table}"))


# Writers of more keys than this take one exclusive lock instead of one per key:
# PostgreSQL's lock table is shared and small (max_locks_per_transaction).
MANY_LOCK_KEYS = 32
# The key every writer holds in shared mode, and a writer of many keys alone.
ALL_KEYS = 0


def lock_key(key: str) -> int:
    """A stable 63-bit advisory-lock number for a key."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16) + 1


def lock_for_writing(session, keys: Iterable[str]) -> None:
    """Hold, until the transaction ends, a lock other writers of the same keys
    wait for, so what this transaction reads next includes their commits.

    PostgreSQL: an advisory lock per key (in sorted order, so two writers never
    deadlock), under a shared lock that a writer of many keys takes exclusively
    instead. SQLite: the database's write lock, taken now (a no-op UPDATE)
    rather than at the first insert; it serializes writers anyway.
    """
    keys = sorted({lock_key(key) for key in keys})
    if not keys:
        return
    if not is_postgres(session):
        session.execute(text("UPDATE item_popularity SET score = score WHERE 0 = 1"))
        return
    if len(keys) > MANY_LOCK_KEYS:
        session.execute(text("SELECT pg_advisory_xact_lock(:all)"), {"all": ALL_KEYS})
        return
    # One round trip: the shared lock (re-entrant), then each key's, in the
    # array's sorted order.
    session.execute(
        text(
            "SELECT pg_advisory_xact_lock_shared(:all), pg_advisory_xact_lock(k) "
            "FROM unnest(CAST(:keys AS bigint[])) k"
        ),
        {"all": ALL_KEYS, "keys": keys},
    )


def dialect_insert(session, table):
    """An INSERT that supports ON CONFLICT on the session's database."""
    return postgresql.insert(table) if is_postgres(session) else sqlite.insert(table)


def upsert_rows(session, table, rows: list[dict], keys: list, set_for_existing) -> None:
    """INSERT ... ON CONFLICT DO UPDATE for many rows (all with the same fields).

    `set_for_existing(excluded)` gives the SET clause for rows that already exist;
    `excluded` holds the proposed row. PostgreSQL gets one statement whatever
    the row count: each field's values as one array, unnested into rows, so its
    text and compiled form never change (a VALUES list per row was compiled
    afresh for every batch size, and measured 3-4x slower at 30 to 1,000 rows);
    SQLite, in-process, gets one reusable statement run for every row.
    """
    if not rows:
        return
    if not is_postgres(session):
        statement = sqlite.insert(table)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=keys, set_=set_for_existing(statement.excluded)
            ),
            rows,
        )
        return
    names = list(rows[0])
    statement = postgresql.insert(table).from_select(names, unnested(table, names))
    session.execute(
        statement.on_conflict_do_update(
            index_elements=keys, set_=set_for_existing(statement.excluded)
        ),
        {name: [row[name] for row in rows] for name in names},
    )


def unnested(table, names: list[str]):
    """SELECT unnest(:a), unnest(:b), ...: rows from one array parameter per
    column (PostgreSQL unnests arrays of one length side by side)."""
    return select(
        *(
            func.unnest(cast(bindparam(name), ARRAY(table.c[name].type))).label(name)
            for name in names
        )
    )
