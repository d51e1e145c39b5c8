"""The `web` blueprint: pages, the tracking endpoint, privacy controls, health."""

import json
import logging
import re
import secrets
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from catalog import all_packages, cities, doctors_page
from forms import ConsultationForm
from models import (
    Category,
    Doctor,
    Package,
    Procedure,
    db,
)
from personalization.events import (
    LIST_ID,
    MAX_LIST_POSITION,
    Interaction,
    ItemKey,
    is_decimal,
)
from personalization.experiment import CONTROL
from personalization.impressions import FEEDBACK_INTERACTIONS
from personalization.recommenders import ALGORITHMS, HYBRID
from personalization_system import current_system
from rate_limits import Limit, rate_limited
from search import search_catalog
from visitor import (
    address_rate_key,
    current_visitor,
    experiment_arm,
    forget_visitor_cookie,
    remember_tracking_choice,
    visitor_id_from_cookie,
    visitor_rate_key,
)

log = logging.getLogger(__name__)

web = Blueprint("web", __name__)

# Home page sections, by item kind, and their sizes.
# Sizes are multiples of 6, so grids of 1, 2 or 3 columns have no orphan card.
HOME_SECTION_SIZES = {"procedure": 6, "doctor": 6, "category": 6}
RECENTLY_VIEWED = 6
POPULAR_IN_CITY = 6
DOCTORS_ON_CATEGORY_PAGE = 6
DOCTORS_ON_PROCEDURE_PAGE = 6
SEARCH_FALLBACK_PROCEDURES = 6
SIMILAR_PROCEDURES = 6
# The recommendations API: its content types, the kind of item each lists, their
# default sizes and its ceiling.
CONTENT_TYPE_KINDS = {
    "categories": "category",
    "procedures": "procedure",
    "doctors": "doctor",
}
RECOMMENDATION_LIMITS = {"categories": 6, "procedures": 6, "doctors": 6}
MAX_LIMIT = MAX_LIST_POSITION
ITEM_ENDPOINTS = {
    "categories": "web.category",
    "procedures": "web.procedure",
    "doctors": "web.doctor",
}
TRACKING_BODY_LIMIT = 64 * 1024
# A redirect target ("next") is at most this long, and never contains these.
MAX_NEXT_LENGTH = 2048
CONTROL_OR_BACKSLASH = re.compile(r"[\x00-\x1f\x7f\\]")
# Events one tracking request may carry.
MAX_BATCH_EVENTS = 50
# The tracker's endpoints and the consultation form: per visitor (by address for
# untracked requests) and per address, so dropping the cookie does not escape.
TRACKER_LIMITS = (
    Limit("TRACKING_RATE_LIMIT", visitor_rate_key),
    Limit("TRACKING_RATE_LIMIT_PER_ADDRESS", address_rate_key),
)
CONSULTATION_LIMITS = (
    Limit("CONSULTATION_RATE_LIMIT", visitor_rate_key),
    Limit("CONSULTATION_RATE_LIMIT_PER_ADDRESS", address_rate_key),
)
OPENAPI_SPEC = Path(__file__).with_name("openapi.yaml")
# Recommendation feedback: its fields, and the shape of a list id.
# (The "Not interested" form also sends next and csrf_token.)
FEEDBACK_FIELDS = {
    *("item_type", "item_id", "feedback", "list_id", "position"),
    *("next", "csrf_token"),
}


def log_page_view(item: ItemKey | None = None) -> None:
    """Note this page view for a tracked visitor: stored when the page is ready
    (record_page_activity), with the lists the page showed."""
    visitor = current_visitor()
    if not visitor.tracked:
        return
    experiment_arm()  # every tracked visitor is in the experiment from their first page
    metadata = None if item else {"path": request.path}
    g.page_view = Interaction("view", item, metadata)


def log_impressions(lists: dict, in_experiment: bool = True) -> None:
    """Note the recommendation lists this request shows a tracked visitor
    ({list name: Ranking}), under their experiment arm unless the lists are not
    the arm's (an API client chose the algorithm): stored when the page is ready
    (record_page_activity)."""
    visitor = current_visitor()
    if not visitor.tracked:
        return  # GPC, DNT, opt-out: shown nothing that is counted
    arm = experiment_arm() if in_experiment else None
    g.impressions = (request_id(), lists, arm)


@web.after_request
def record_page_activity(response):
    """Store what the page noted (its view, its lists) in one transaction, after
    it was rendered (a commit expires what a page reads); a failure never
    breaks the page."""
    view, impressions = g.pop("page_view", None), g.pop("impressions", None)
    if view or impressions:
        visitor = current_visitor()
        try:
            current_system().record_page(
                visitor.id, visitor.session_id, view, impressions
            )
        except SQLAlchemyError as error:
            log.warning("page activity not recorded: %s", error.__class__.__name__)
    return response


def request_id() -> str:
    """A random id for this request, shared by what it records."""
    if "request_id" not in g:
        g.request_id = secrets.token_hex(16)
    return g.request_id


def get_by_slug(model, slug: str):
    """Load one catalog item by slug, or answer with the 404 page."""
    return db.first_or_404(select(model).where(model.slug == slug))


@web.get("/")
def home():
    log_page_view()
    home = current_system().home_sections(
        current_visitor().id,
        HOME_SECTION_SIZES,
        RECENTLY_VIEWED,
        POPULAR_IN_CITY,
        experiment_arm(),
    )
    page = render_template("home.html", home=home, sections=home.by_kind)
    log_impressions(
        {
            **{f"home:{kind}": ranking for kind, ranking in home.by_kind.items()},
            "home:popular_in_city": home.popular_in_city,
        }
    )
    return page


@web.get("/categories")
def categories():
    log_page_view()
    items = db.session.scalars(select(Category).order_by(Category.id)).all()
    return render_template("categories.html", categories=items)


@web.get("/procedures")
def procedures():
    log_page_view()
    items = db.session.scalars(select(Category).order_by(Category.id)).all()
    return render_template("procedures.html", categories=items)


@web.get("/doctors")
def doctors():
    log_page_view()
    city = chosen_city()
    slug = request.args.get("procedure")
    procedure = get_by_slug(Procedure, slug) if slug else None
    slug = request.args.get("category")
    category = get_by_slug(Category, slug) if slug else None
    page = doctors_page(city, procedure, page_number(), category=category)
    if page is None:
        abort(404, description="There is no such page of doctors.")
    return render_template(
        "doctors.html",
        page=page,
        cities=cities(),
        city=city,
        procedure=procedure,
        category=category,
    )


@web.get("/packages")
def packages():
    log_page_view()
    return render_template("packages.html", packages=all_packages())


def chosen_city() -> str | None:
    """The city to list doctors in: ?city= when given (then remembered for a
    tracked visitor; empty means every city), else the one they chose before."""
    visitor = current_visitor()
    if "city" not in request.args:
        return current_system().visitor_city(visitor.id)
    city = request.args["city"].strip() or None
    if city is not None and city not in cities():
        abort(
            400, description=f"No doctors practise in {city!r}: choose a listed city."
        )
    if visitor.tracked:
        current_system().choose_city(visitor.id, city)
    return city


def page_number() -> int:
    """Read ?page=: a whole number from 1 (400 otherwise)."""
    raw = request.args.get("page", "1")
    if not is_decimal(raw) or int(raw) < 1 or len(raw) > 6:
        abort(400, description="page must be a whole number from 1.")
    return int(raw)


@web.get("/categories/<slug>")
def category(slug: str):
    item = get_by_slug(Category, slug)
    log_page_view(ItemKey("category", item.id))
    doctors = doctors_page(per_page=DOCTORS_ON_CATEGORY_PAGE, category=item)
    return render_template("category.html", category=item, doctors=doctors)


@web.get("/procedures/<slug>")
def procedure(slug: str):
    item = get_by_slug(Procedure, slug)
    log_page_view(ItemKey("procedure", item.id))
    return procedure_page(item, ConsultationForm())


def procedure_page(item: Procedure, form: ConsultationForm) -> str:
    city = chosen_city()
    similar = current_system().similar(
        ItemKey("procedure", item.id), SIMILAR_PROCEDURES
    )
    page = render_template(
        "procedure.html",
        procedure=item,
        similar=similar,
        city=city,
        cities=cities(),
        doctors=doctors_page(city, item, 1, DOCTORS_ON_PROCEDURE_PAGE),
        form=form,
    )
    log_impressions({"procedure:similar": similar})
    return page


@web.get("/doctors/<slug>")
def doctor(slug: str):
    item = get_by_slug(Doctor, slug)
    log_page_view(ItemKey("doctor", item.id))
    return doctor_page(item, ConsultationForm())


def doctor_page(item: Doctor, form: ConsultationForm) -> str:
    return render_template("doctor.html", doctor=item, form=form)


@web.get("/packages/<slug>")
def package(slug: str):
    item = get_by_slug(Package, slug)
    log_page_view(ItemKey("package", item.id))
    return package_page(item, ConsultationForm())


def package_page(item: Package, form: ConsultationForm) -> str:
    return render_template("package.html", package=item, form=form)


# What a consultation can be about: the URL's word, its model, its item kind
# and the page the form sits on.
CONSULTATION_SUBJECTS = {
    "doctors": (Doctor, "doctor", doctor_page),
    "procedures": (Procedure, "procedure", procedure_page),
    "packages": (Package, "package", package_page),
}


@web.post("/<any(doctors, procedures, packages):kind>/<slug>/consultation")
@rate_limited(*CONSULTATION_LIMITS)
def request_consultation(kind: str, slug: str):
    """Store a consultation request, or show the page again with each error
    next to its field (422, nothing stored)."""
    model, item_kind, page = CONSULTATION_SUBJECTS[kind]
    item = get_by_slug(model, slug)
    form = ConsultationForm()
    if form.is_spam:
        # Answer a bot as if it succeeded, so it learns nothing; store nothing.
        log.info("consultation request dropped: the honeypot was filled")
        session.pop("consultation", None)
        return redirect(url_for("web.consultation_sent"), code=303)
    if not form.validate_on_submit():
        return page(item, form), 422
    visitor = current_visitor()
    reference = current_system().request_consultation(
        visitor.id if visitor.tracked else visitor_id_from_cookie(),
        visitor.session_id if visitor.tracked else None,
        ItemKey(item_kind, item.id),
        form.contact(),
    )
    # Only this browser's session can show the confirmation's details.
    session["consultation"] = reference
    return redirect(url_for("web.consultation_sent"), code=303)


@web.get("/consultations/sent")
def consultation_sent():
    """What happens next, for the request this browser just sent."""
    reference = session.get("consultation")
    sent = current_system().consultation(reference) if reference else None
    return render_template(
        "consultation_sent.html",
        consultation=sent,
        retention_days=current_system().settings.consultation_retention_days,
    )


@web.get("/search")
def search():
    # The query itself arrives as a "search" event from the tracker; the view
    # records only the page, so a search is not counted twice.
    log_page_view()
    results = search_catalog(request.args.get("q"))
    # No dead end: a search that finds nothing offers the popular procedures.
    popular = (
        current_system().recommend("procedure", None, SEARCH_FALLBACK_PROCEDURES)
        if not results.total
        else []
    )
    return render_template("search.html", results=results, popular=popular)


def stored_about_this_browser() -> dict:
    """How much is stored about the visitor this browser's cookie names."""
    visitor_id = visitor_id_from_cookie()
    if not visitor_id:
        return {
            "interactions": 0,
            "interests": [],
            "consultation_requests": 0,
            "city": None,
        }
    return current_system().visitor_summary(visitor_id)


@web.get("/privacy")
def privacy():
    # Not logged: reading how we treat data should not create any.
    return render_template("privacy.html", stored=stored_about_this_browser())


@web.get("/privacy/forget")
def confirm_forget():
    """Ask before erasing: the form on this page posts to /personalization/forget."""
    return render_template("forget.html", stored=stored_about_this_browser())


@web.get("/privacy/download")
def download_my_data():
    """Everything stored about this browser's visitor, as a JSON file (GDPR
    articles 15 and 20). Only the visitor the cookie names; never logged."""
    visitor_id = visitor_id_from_cookie()
    data = (
        current_system().visitor_data(visitor_id)
        if visitor_id
        else {
            "visitor_id": None,
            "interests": [],
            "interactions": [],
            "consultation_requests": [],
        }
    )
    response = current_app.json.response(data)
    response.headers["Content-Disposition"] = (
        'attachment; filename="antidote-my-data.json"'
    )
    return response


@web.post("/privacy/tracking")
def set_tracking_choice():
    """Turn personalization on or off for this browser (consent banner, /privacy)."""
    choice = request.form.get("choice")
    if choice not in ("on", "off"):
        abort(400, description="choice must be 'on' or 'off'")
    if choice == "on":
        flash("Personalization is on. You can turn it off here at any time.")
    else:
        flash("Personalization is off: nothing about your visits is recorded.")
    response = redirect(local_path(request.form.get("next")), code=303)
    return remember_tracking_choice(response, allowed=choice == "on")


def local_path(candidate: str | None) -> str:
    """Return a same-site path to go back to, never another site.

    Browsers drop tabs and newlines inside a URL and read a backslash as a slash,
    so "/<tab>/evil.example" and "/\\evil.example" mean "//evil.example": another
    site. Kept only: a path relative to this site, before and after decoding,
    with no control characters or backslashes. Anything else goes to /privacy.
    """
    fallback = url_for("web.privacy")
    if not candidate or len(candidate) > MAX_NEXT_LENGTH:
        return fallback
    for form in (candidate, unquote(candidate)):
        if CONTROL_OR_BACKSLASH.search(form) or not form.startswith("/"):
            return fallback
        if form.startswith("//"):
            return fallback
    parts = urlsplit(candidate)
    if parts.scheme or parts.netloc:
        return fallback
    return urlunsplit(("", "", parts.path, parts.query, ""))


@web.post("/personalization/track-interaction")
@rate_limited(*TRACKER_LIMITS)
def track_interaction():
    """Store one event or a batch from the tracker; say which were rejected and why."""
    if not request.is_json:
        return {"error": "Content-Type must be application/json"}, 415
    if (request.content_length or 0) > TRACKING_BODY_LIMIT:
        abort(413, description=f"body is larger than {TRACKING_BODY_LIMIT} bytes")
    data = request.get_data()
    if len(data) > TRACKING_BODY_LIMIT:  # chunked bodies carry no length up front
        abort(413, description=f"body is larger than {TRACKING_BODY_LIMIT} bytes")
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        return {"error": "body is not valid JSON"}, 400
    events, error = unpack_events(payload)
    if error:
        return {"error": error}, 400
    visitor = current_visitor()
    if not visitor.tracked:
        return {
            "accepted": 0,
            "rejected": [],
            "ignored": len(events),
            "reason": f"tracking is off for this visitor ({visitor.blocked_by})",
        }, 202
    system = current_system()
    valid, rejected = system.validate_events(events)
    if not valid:
        return {"error": "no valid events", "accepted": 0, "rejected": rejected}, 400
    accepted = system.record_interactions(visitor.id, visitor.session_id, valid)
    return {"accepted": accepted, "rejected": rejected}, 202


def unpack_events(payload) -> tuple[list, str | None]:
    """Accept one event object or {"events": [...]}; return the list or an error."""
    if not isinstance(payload, dict):
        return [], 'body must be a JSON object: one event or {"events": [...]}'
    if "events" not in payload:
        return [payload], None
    if set(payload) != {"events"}:
        return [], 'a batch must have only the field "events"'
    events = payload["events"]
    if not isinstance(events, list) or not events:
        return [], '"events" must be a non-empty array'
    if len(events) > MAX_BATCH_EVENTS:
        return [], f"a batch holds at most {MAX_BATCH_EVENTS} events"
    return events, None


@web.post("/api/recommendations/feedback")
@rate_limited(*TRACKER_LIMITS)
def recommendation_feedback():
    """A visitor clicked or dismissed a recommended item (JSON, CSRF header)."""
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        return {"error": "body must be a JSON object"}, 400
    event, error = feedback_event(payload)
    if error:
        return {"error": error}, 400
    return record_feedback(event)


@web.post("/recommendations/not-interested")
def not_interested():
    """The "Not interested" button of a recommended card (a plain form)."""
    event, error = feedback_event({**request.form.to_dict(), "feedback": "dismissed"})
    if error:
        abort(400, description=error)
    answer, status = record_feedback(event)
    if status == 202 and answer.get("accepted"):
        flash("Got it: we won't recommend that again.")
    return redirect(local_path(request.form.get("next")), code=303)


def feedback_event(payload: dict) -> tuple[dict, str | None]:
    """Read feedback ({item_type, item_id, feedback, list_id?, position?}) as a
    tracker event; say what is wrong instead when it cannot be one."""
    feedback = payload.get("feedback")
    if feedback not in FEEDBACK_INTERACTIONS:
        return {}, "feedback must be 'clicked' or 'dismissed'"
    unknown = set(payload) - FEEDBACK_FIELDS
    if unknown:
        return {}, f"unknown field: {sorted(unknown)[0]}"
    item_id = payload.get("item_id")
    if isinstance(item_id, str) and is_decimal(item_id) and len(item_id) < 10:
        item_id = int(item_id)
    metadata = {}
    list_id = payload.get("list_id")
    if list_id not in (None, ""):
        if not isinstance(list_id, str) or not LIST_ID.fullmatch(list_id):
            return {}, "list_id must be the list_id a page or the API gave"
        metadata["list_id"] = list_id
    position = payload.get("position")
    if position not in (None, ""):
        if isinstance(position, str) and is_decimal(position) and len(position) < 4:
            position = int(position)  # from a form
        if isinstance(position, float) and position.is_integer():
            position = int(position)  # JSON's 2.0 is the integer 2
        if not isinstance(position, int) or isinstance(position, bool):
            return {}, f"position must be a whole number from 1 to {MAX_LIST_POSITION}"
        if not 1 <= position <= MAX_LIST_POSITION:
            return {}, f"position must be a whole number from 1 to {MAX_LIST_POSITION}"
        metadata["position"] = position
    return {
        "interaction_type": FEEDBACK_INTERACTIONS[feedback],
        "target_type": payload.get("item_type"),
        "target_id": item_id,
        "metadata": metadata or None,
    }, None


def record_feedback(event: dict) -> tuple[dict, int]:
    """Store one feedback event for a tracked visitor, like the tracker's."""
    visitor = current_visitor()
    if not visitor.tracked:
        return {"accepted": 0, "ignored": 1, "reason": "tracking is off"}, 202
    system = current_system()
    valid, rejected = system.validate_events([event])
    if not valid:
        return {"error": rejected[0]["error"]}, 400
    system.record_interactions(visitor.id, visitor.session_id, valid)
    return {"accepted": 1}, 202


@web.get("/api/recommendations/stats")
def recommendation_stats():
    """This visitor's recommendations: shown, clicked, dismissed, click-through."""
    visitor_id = visitor_id_from_cookie()
    if not visitor_id:
        return {"shown": 0, "clicked": 0, "dismissed": 0, "click_through_rate": None}
    return current_system().recommendation_stats(visitor_id)


@web.get("/personalization/recommendations/<content_type>")
def recommendations(content_type: str):
    """Ranked categories, procedures or doctors for this visitor, as JSON."""
    if content_type not in RECOMMENDATION_LIMITS:
        return {
            "error": "content_type must be one of " + ", ".join(RECOMMENDATION_LIMITS)
        }, 400
    limit, error = parse_limit(
        request.args.get("limit"),
        request.args.get("top_k"),
        RECOMMENDATION_LIMITS[content_type],
    )
    if error:
        return {"error": error}, 400
    # The visitor's arm decides, unless the client asks for an algorithm.
    algorithm = asked = request.args.get("algorithm")
    if asked is None:
        algorithm = "popular" if experiment_arm() == CONTROL else HYBRID
    if algorithm not in ALGORITHMS:
        return {"error": "algorithm must be one of " + ", ".join(ALGORITHMS)}, 400
    slug = request.args.get("item")
    if slug is not None:
        if content_type != "procedures":
            return {"error": "item is only supported for procedures"}, 400
        item = db.session.scalar(select(Procedure).where(Procedure.slug == slug))
        if item is None:
            return {"error": f"no procedure with slug {slug!r}"}, 404
        ranking = current_system().similar(
            ItemKey("procedure", item.id), limit, algorithm
        )
    else:
        ranking = current_system().recommend(
            CONTENT_TYPE_KINDS[content_type], current_visitor().id, limit, algorithm
        )
    answer = {
        "content_type": content_type,
        "list_id": ranking.list_id,
        "personalized": ranking.personalized,
        "source": ranking.source,
        "items": [
            {
                "id": entry.item.id,
                "slug": entry.item.slug,
                "name": entry.item.display_name,
                "url": url_for(ITEM_ENDPOINTS[content_type], slug=entry.item.slug),
                "score": entry.score,
                "reason": entry.reason,
                "why": entry.why,
            }
            for entry in ranking
        ],
    }
    log_impressions(
        {f"api:{content_type}" + (":similar" if slug else ""): ranking},
        in_experiment=asked is None,
    )
    return answer


def parse_limit(
    limit: str | None, top_k: str | None, default: int
) -> tuple[int, str | None]:
    """Read ?limit= or its alias ?top_k=: whole numbers from 1 to MAX_LIMIT;
    limit wins when both are given."""
    for name, raw in (("top_k", top_k), ("limit", limit)):
        if raw is None:
            continue
        if not is_decimal(raw) or len(raw) > 3 or not 1 <= int(raw) <= MAX_LIMIT:
            return default, f"{name} must be a whole number from 1 to {MAX_LIMIT}"
        default = int(raw)
    return default, None


@web.post("/personalization/forget")
def forget():
    """Delete everything stored about this browser's visitor, and its cookie.

    Works whatever the privacy state: a visitor who opted out can still erase
    what was recorded before.
    """
    visitor_id = visitor_id_from_cookie()
    deleted = (
        current_system().forget_visitor(visitor_id)
        if visitor_id
        else {"interactions": 0, "affinities": 0, "consultation_requests": 0}
    )
    log.info("visitor erased: %s", deleted)
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        parts = [
            counted(deleted["interactions"], "recorded interaction"),
            counted(deleted["affinities"], "interest score"),
        ]
        if deleted["consultation_requests"]:
            parts.append(
                counted(deleted["consultation_requests"], "consultation request")
            )
        flash(f"Deleted {', '.join(parts[:-1])} and {parts[-1]}.")
        response = redirect(url_for("web.privacy"), code=303)
    else:
        response = current_app.json.response({"deleted": deleted})
    return forget_visitor_cookie(response)


@web.app_template_filter("counted")
def counted(number: int, thing: str) -> str:
    """ "1 interest score", "2 interest scores", "no interest scores"."""
    if number == 0:
        return f"no {thing}s"
    return f"{number} {thing}" if number == 1 else f"{number} {thing}s"


@web.get("/favicon.ico")
def favicon():
    """Browsers that ask for /favicon.ico get the site's SVG icon."""
    return redirect(url_for("static", filename="favicon.svg"), code=301)


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


@web.get("/openapi.json")
def openapi_spec():
    """The API contract (openapi.yaml), as JSON for tools and clients."""
    return load_openapi_spec()


@cache
def load_openapi_spec() -> dict:
    return yaml.safe_load(OPENAPI_SPEC.read_text(encoding="utf-8"))
