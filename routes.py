"""The `web` blueprint: the site's pages and its health check."""

import logging

from flask import Blueprint, current_app, render_template, request
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from catalog import search_catalog
from models import Category, Doctor, Package, Procedure, db, doctor_procedures
from personalization_system import PersonalizationEngine

log = logging.getLogger(__name__)

web = Blueprint("web", __name__)

HOME_SECTION_SIZES = {"categories": 6, "procedures": 6, "doctors": 9}
DOCTORS_ON_CATEGORY_PAGE = 9


def engine() -> PersonalizationEngine:
    """Return the app's engine, created once in the factory."""
    return current_app.extensions["personalization_engine"]


def get_by_slug(model, slug: str):
    """Load one catalog item by slug, or answer with the 404 page."""
    return db.first_or_404(select(model).where(model.slug == slug))


@web.get("/")
def home():
    ranking = engine()
    return render_template(
        "home.html",
        categories=ranking.get_popular_categories(HOME_SECTION_SIZES["categories"]),
        procedures=ranking.get_popular_procedures(HOME_SECTION_SIZES["procedures"]),
        doctors=ranking.get_popular_doctors(HOME_SECTION_SIZES["doctors"]),
    )


@web.get("/categories")
def categories():
    items = db.session.scalars(select(Category).order_by(Category.id)).all()
    return render_template("categories.html", categories=items)


@web.get("/procedures")
def procedures():
    items = db.session.scalars(select(Category).order_by(Category.id)).all()
    return render_template("procedures.html", categories=items)


@web.get("/doctors")
def doctors():
    city = request.args.get("city", "").strip()
    cities = db.session.scalars(
        select(Doctor.city).distinct().order_by(Doctor.city)
    ).all()
    statement = select(Doctor).order_by(
        Doctor.rating.desc(), Doctor.review_count.desc(), Doctor.name
    )
    if city:
        statement = statement.where(Doctor.city == city)
    return render_template(
        "doctors.html",
        doctors=db.session.scalars(statement).all(),
        cities=cities,
        city=city,
    )


@web.get("/categories/<slug>")
def category(slug: str):
    item = get_by_slug(Category, slug)
    doctors = db.session.scalars(
        select(Doctor)
        .where(
            Doctor.id.in_(
                select(doctor_procedures.c.doctor_id)
                .join(Procedure, Procedure.id == doctor_procedures.c.procedure_id)
                .where(Procedure.category_id == item.id)
            )
        )
        .order_by(Doctor.rating.desc(), Doctor.review_count.desc(), Doctor.name)
        .limit(DOCTORS_ON_CATEGORY_PAGE)
    ).all()
    return render_template("category.html", category=item, doctors=doctors)


@web.get("/procedures/<slug>")
def procedure(slug: str):
    return render_template("procedure.html", procedure=get_by_slug(Procedure, slug))


@web.get("/doctors/<slug>")
def doctor(slug: str):
    return render_template("doctor.html", doctor=get_by_slug(Doctor, slug))


@web.get("/packages/<slug>")
def package(slug: str):
    return render_template("package.html", package=get_by_slug(Package, slug))


@web.get("/search")
def search():
    results = search_catalog(request.args.get("q"))
    return render_template("search.html", results=results)


@web.get("/privacy")
def privacy():
    return render_template("privacy.html")


@web.get("/healthz")
def healthz():
    """Report whether the site and its database can serve requests."""
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        db.session.rollback()
        log.warning("health check: database unreachable: %s", error.__class__.__name__)
        return {"status": "unavailable", "database": "unreachable"}, 503
    return {"status": "ok", "database": "ok"}
