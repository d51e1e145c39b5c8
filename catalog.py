"""Catalog listings the pages show: doctors by city and procedure, top rated
first, a page at a time; every package; the cities doctors practise in."""

import math
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from models import (
    Category,
    Doctor,
    Package,
    Procedure,
    db,
    doctor_procedures,
    top_rated_order,
)

DOCTORS_PER_PAGE = 12


@dataclass(frozen=True)
class Page:
    """One page of a longer list."""

    items: list
    number: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.pages


def cities() -> list[str]:
    """Every city a doctor practises in, alphabetically."""
    return list(
        db.session.scalars(select(Doctor.city).distinct().order_by(Doctor.city))
    )


def doctors_page(
    city: str | None = None,
    procedure: Procedure | None = None,
    number: int = 1,
    per_page: int = DOCTORS_PER_PAGE,
    category: Category | None = None,
) -> Page | None:
    """Doctors, top rated first (Bayesian average), optionally only those in a
    city, performing a procedure, or performing any of a category's; None when
    the page is past the last."""
    conditions = []
    if city:
        conditions.append(Doctor.city == city)
    if procedure is not None:
        conditions.append(
            Doctor.id.in_(
                select(doctor_procedures.c.doctor_id).where(
                    doctor_procedures.c.procedure_id == procedure.id
                )
            )
        )
    if category is not None:
        conditions.append(
            Doctor.id.in_(
                select(doctor_procedures.c.doctor_id)
                .join(Procedure, Procedure.id == doctor_procedures.c.procedure_id)
                .where(Procedure.category_id == category.id)
            )
        )
    total = db.session.scalar(select(func.count(Doctor.id)).where(*conditions))
    page = Page([], number, per_page, total)
    if number > page.pages:
        return None
    items = db.session.scalars(
        select(Doctor)
        .where(*conditions)
        .order_by(*top_rated_order())
        .offset((number - 1) * per_page)
        .limit(per_page)
    ).all()
    return Page(list(items), number, per_page, total)


def all_packages() -> list[Package]:
    """Every package, cheapest first, with its doctor and procedures loaded."""
    return list(
        db.session.scalars(
            select(Package)
            .options(selectinload(Package.doctor), selectinload(Package.procedures))
            .order_by(Package.price, Package.name)
        )
    )
