"""Database tables: the catalog (categories, procedures, doctors, packages) and the
personalization log and affinities."""

import math
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    Column,
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
    event,
    func,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

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
    # Affinity decay needs power(); not every SQLite build has its math functions.
    dbapi_connection.create_function("power", 2, math.pow, deterministic=True)


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

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    slug: Mapped[str] = mapped_column(String(120), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")

    procedures: Mapped[list["Procedure"]] = relationship(
        back_populates="category", order_by="Procedure.name"
    )

    def __repr__(self) -> str:
        return f"<Category {self.slug}>"


class Procedure(db.Model):
    __tablename__ = "procedures"

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

    def __repr__(self) -> str:
        return f"<Procedure {self.slug}>"


class Doctor(db.Model):
    __tablename__ = "doctors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(150))
    slug: Mapped[str] = mapped_column(String(170), unique=True)
    title: Mapped[str] = mapped_column(String(150))
    city: Mapped[str] = mapped_column(String(100), index=True)
    rating: Mapped[Decimal] = mapped_column(Numeric(2, 1))
    review_count: Mapped[int] = mapped_column(Integer, default=0)
    bio: Mapped[str] = mapped_column(Text, default="")

    procedures: Mapped[list[Procedure]] = relationship(
        secondary=doctor_procedures,
        back_populates="doctors",
        order_by="Procedure.name",
    )
    packages: Mapped[list["Package"]] = relationship(
        back_populates="doctor", order_by="Package.price"
    )

    def __repr__(self) -> str:
        return f"<Doctor {self.slug}>"


class Package(db.Model):
    __tablename__ = "packages"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(150))
    slug: Mapped[str] = mapped_column(String(170), unique=True)
    doctor_id: Mapped[int] = mapped_column(
        ForeignKey("doctors.id", ondelete="CASCADE"), index=True
    )
    description: Mapped[str] = mapped_column(Text, default="")
    # Bundle price in whole US dollars.
    price: Mapped[int] = mapped_column(Integer)

    doctor: Mapped[Doctor] = relationship(back_populates="packages")
    procedures: Mapped[list[Procedure]] = relationship(
        secondary=package_procedures,
        back_populates="packages",
        order_by="Procedure.name",
    )

    def __repr__(self) -> str:
        return f"<Package {self.slug}>"


class UserInteraction(db.Model):
    """One thing an anonymous visitor did: a view, click, search or form submit."""

    __tablename__ = "user_interactions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), index=True)
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
