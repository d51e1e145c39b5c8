"""The `admin` blueprint: the /admin dashboard behind a login, and `flask admin
create`. Admins are rows of admin_users with a salted password hash (werkzeug);
failed logins are rate-limited per client address and per username; every page
is private (no-store) and kept out of search engines."""

import hashlib
import hmac
import logging
from datetime import UTC, datetime
from functools import cache, wraps
from urllib.parse import urlsplit

import click
from flask import (
    Blueprint,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import func, select
from werkzeug.security import check_password_hash, generate_password_hash

import charts
from forms import LoginForm
from models import AdminUser, db, utcnow
from personalization.identity import network_of
from personalization_system import current_system
from rate_limits import Limit, rate_limited
from visitor import address_rate_key

log = logging.getLogger(__name__)

admin = Blueprint("admin", __name__, url_prefix="/admin", cli_group="admin")

MIN_PASSWORD_LENGTH = 12
MAX_USERNAME_LENGTH = 80
# The ?days= windows the pages offer.
WINDOWS = (7, 30, 90)
DEFAULT_WINDOW = 30
# Everyone sees the same message, whether the username exists or not.
LOGIN_FAILED = "That username and password do not match an admin."
PAGES = {
    "overview": "Overview",
    "recommendations": "Recommendations",
    "experiment": "Experiment",
    "regions": "Regions",
    "quality": "Data quality",
    "journeys": "Journeys",
    "cohorts": "Retention",
}


# Signing in and out


@cache
def dummy_hash() -> str:
    """A hash to check unknown usernames against, so they take as long as a
    wrong password (the answer's timing does not tell which usernames exist)."""
    return generate_password_hash("not the password of anyone")


def authenticate(username: str, password: str) -> AdminUser | None:
    """The admin with this username and password, or None."""
    user = find_admin(username)
    if user is None:
        check_password_hash(dummy_hash(), password)
        return None
    return user if check_password_hash(user.password_hash, password) else None


def find_admin(username: str) -> AdminUser | None:
    """The admin of this username, whatever its case."""
    return db.session.scalar(
        select(AdminUser).where(
            func.lower(AdminUser.username) == username.strip().lower()
        )
    )


def username_rate_key() -> str:
    """Rate-limit key of the username a login names, from the client's network
    (/24, or /48 for IPv6): guessing one name from many addresses of a network
    is held, while the admin, signing in from elsewhere, is never locked out by
    someone else's guesses. A keyed hash: never the name or the address."""
    name = request.form.get("username", "").strip().lower()
    key = f"{name}|{network_of(request.remote_addr)}"
    secret = current_app.config["FINGERPRINT_SECRET"].encode()
    digest = hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:32]
    return "admin-login:" + digest


def login_failed(response) -> bool:
    """Only failed logins count toward the limits (a success redirects)."""
    return response.status_code != 302


# Failed sign-ins, per client address and per username from anywhere.
LOGIN_LIMITS = (
    Limit("ADMIN_LOGIN_RATE_LIMIT_PER_ADDRESS", address_rate_key),
    Limit("ADMIN_LOGIN_RATE_LIMIT_PER_USERNAME", username_rate_key),
)


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a dashboard path, never another site."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and parts.path.startswith("/admin"):
            return target if "\\" not in target else url_for("admin.overview")
    return url_for("admin.overview")


def signed_in_admin() -> AdminUser | None:
    """The admin this session belongs to, while their login lasts and their row
    exists (deleting it ends their sessions); else None, and the session forgets
    them. /metrics asks the same."""
    admin_id = session.get("admin_id")
    since = session.get("admin_since", 0)
    hours = current_app.config["ADMIN_SESSION_HOURS"]
    expired = datetime.now(UTC).timestamp() - since > hours * 3600
    user = db.session.get(AdminUser, admin_id) if admin_id else None
    if user is None or expired:
        session.pop("admin_id", None)
        return None
    return user


def login_required(view):
    """Send anyone who is not a signed-in admin to the login page."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        user = signed_in_admin()
        if user is None:
            return redirect(url_for("admin.login", next=request.full_path))
        g.admin = user
        return view(*args, **kwargs)

    return wrapped


@admin.after_request
def private_pages(response):
    """Admin pages are for one person: never stored, never indexed."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


@admin.context_processor
def dashboard_helpers() -> dict:
    return {
        "chart": charts,
        "pages": PAGES,
        "windows": WINDOWS,
        "pct": lambda value: "–" if value is None else charts.percent(value),
        "num": lambda value: "–" if value is None else charts.number(value),
        "ctr_chart": ctr_chart,
        "bars": lambda rows, label, value: [
            (str(row[label]), row[value] or 0) for row in rows
        ],
        "short_days": lambda days: [day[5:] for day in days],
        "reason_bars": lambda rows: [
            (f"{r['source']}: {r['reason']}", r["count"]) for r in rows
        ],
        "estimate_chart": estimate_chart,
        "funnel_chart": funnel_chart,
        "minute_bars": lambda rows: [
            (r["kind"], round(r["seconds"] / 60)) for r in rows
        ],
        "week_labels": lambda weeks: [f"Week {week}" for week in weeks],
        "cohort_series": cohort_series,
        "shade": shade,
        "fixed3": "{:.3f}".format,
        "lift": "{:+.1%}".format,
    }


def funnel_chart(title: str, funnel: list[dict], step: int):
    """One step of the funnel: the share of each arm's visitors who reached it."""
    return charts.interval_chart(
        title,
        [
            (
                row["arm"],
                row["intervals"][step]["value"],
                row["intervals"][step]["low"],
                row["intervals"][step]["high"],
            )
            for row in funnel
        ],
        x_label="Share of home page visitors",
        fmt=charts.percent,
    )


def cohort_series(data: dict) -> list[tuple[str, list]]:
    """The average retention curve, then the latest cohorts' (complete weeks)."""
    series = [("All cohorts", data["average"])]
    for cohort in data["lines"]:
        series.append(
            (
                f"Week of {cohort['week_of']}",
                [c["share"] if c["complete"] else None for c in cohort["cells"]],
            )
        )
    return series


def shade(share: float | None) -> int:
    """A heat-map cell's shade, 0 (none) to 5 (half or more returned)."""
    if not share:
        return 0
    return min(5, 1 + int(share * 10))


def estimate_chart(title: str, arms: dict, figure: str, x_label: str, fmt):
    """One of the experiment report's estimates, per arm, with its interval."""
    return charts.interval_chart(
        title,
        [
            (name, arm[figure]["value"], arm[figure]["low"], arm[figure]["high"])
            for name, arm in arms.items()
        ],
        x_label=x_label,
        fmt=fmt,
    )


def ctr_chart(title: str, rows: list[dict], prefix: str = ""):
    """Click-through with its interval, one row per group (arm, source...)."""
    return charts.interval_chart(
        title,
        [
            (f"{prefix}{r['name']}", r["click_through"], r["low"], r["high"])
            for r in rows
        ],
        x_label="Click-through",
        fmt=charts.percent,
    )


@admin.get("/login")
def login():
    if session.get("admin_id"):
        return redirect(safe_next(request.args.get("next")))
    form = LoginForm()
    return render_template(
        "admin/login.html", form=form, next=request.args.get("next", "")
    )


@admin.post("/login")
@rate_limited(*LOGIN_LIMITS, count_when=login_failed)
def login_post():
    """Check the username and password; on success start a fresh session."""
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        user = authenticate(form.username.data, form.password.data)
        if user is not None:
            # A new session: nothing from before the login carries over.
            session.clear()
            session["admin_id"] = user.id
            session["admin_since"] = int(datetime.now(UTC).timestamp())
            user.last_login_at = utcnow()
            db.session.commit()
            log.info("admin %s logged in", user.id)
            return redirect(safe_next(request.form.get("next")))
        error = LOGIN_FAILED
    return render_template(
        "admin/login.html",
        form=form,
        error=error,
        next=request.form.get("next", ""),
    )


@admin.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("admin.login"))


# The pages


def window_days() -> int:
    """The ?days= window: one of WINDOWS, else 400."""
    raw = request.args.get("days", str(DEFAULT_WINDOW))
    if not raw.isdigit() or int(raw) not in WINDOWS:
        abort(400, description=f"days must be one of {', '.join(map(str, WINDOWS))}")
    return int(raw)


def show(name: str, **extra):
    days = window_days()
    data = current_system().dashboard_page(name, days)
    return render_template(
        f"admin/{name}.html", page=name, days=days, data=data, **extra
    )


@admin.get("/")
@login_required
def overview():
    return show("overview")


@admin.get("/recommendations")
@login_required
def recommendations():
    return show("recommendations")


@admin.get("/experiment")
@login_required
def experiment():
    return show("experiment")


@admin.get("/regions")
@login_required
def regions():
    return show("regions")


@admin.get("/quality")
@login_required
def quality():
    return show("quality", personalize=personalize_state())


@admin.get("/journeys")
@login_required
def journeys():
    return show("journeys")


@admin.get("/cohorts")
@login_required
def cohorts():
    return show("cohorts")


def personalize_state() -> dict | None:
    """The AWS Personalize circuit breakers of this worker process, or None when
    no Personalize campaign or event tracker is configured."""
    client = current_app.extensions.get("personalize_client")
    if client is None or not (client.enabled or client.tracking_id):
        return None
    return {
        name: {
            "configured": configured,
            "open": breaker.is_open,
            "failures": breaker.failures,
        }
        for name, configured, breaker in (
            ("Re-ranking", client.enabled, client.breaker),
            ("Event streaming", bool(client.tracking_id), client.events_breaker),
        )
    }


# `flask admin create`


@admin.cli.command("create")
@click.option("--username", help="The admin's login name (asked for when left out).")
def create_command(username: str | None) -> None:
    """Create an admin who can sign in to the /admin dashboard (the password is
    asked for twice, hidden)."""
    username = (username or click.prompt("Username")).strip()
    if not username or len(username) > MAX_USERNAME_LENGTH:
        raise click.ClickException(
            f"The username must be 1 to {MAX_USERNAME_LENGTH} characters."
        )
    if find_admin(username) is not None:
        raise click.ClickException(f"An admin named {username!r} already exists.")
    password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise click.ClickException(
            f"The password must be at least {MIN_PASSWORD_LENGTH} characters long; "
            "nothing was created."
        )
    db.session.add(
        AdminUser(username=username, password_hash=generate_password_hash(password))
    )
    db.session.commit()
    click.echo(f"Admin {username!r} created. Sign in at /admin/login.")
