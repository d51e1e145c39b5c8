"""Who the anonymous visitor is, and whether they let us track them: the visitor
cookie (the only identity), privacy signals (GPC, DNT, opt-out) and consent."""

import logging
import re
import secrets
from dataclasses import dataclass

from flask import current_app, g, request, session
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy.exc import SQLAlchemyError

from personalization.identity import VISITOR_ID, new_visitor_id
from personalization_system import current_system

log = logging.getLogger(__name__)

VISITOR_COOKIE = "antidote_visitor"
# "on": the visitor agreed to personalization (needed in opt-in mode);
# "off": the visitor opted out or declined.
TRACKING_COOKIE = "antidote_tracking"
# Crawlers that say what they are: they see popular pages and leave no trace (each
# request would otherwise count as a new visitor in the statistics).
SELF_DECLARED_BOT = re.compile(r"bot[/;) ]|bot$|crawler|spider|slurp", re.IGNORECASE)


@dataclass(frozen=True)
class Visitor:
    """The visitor behind this request, as far as their privacy choices allow.

    The first-party cookie is the identity: a browser without it gets a fresh
    random id (in a new cookie), never one derived from what it sends, so two
    people behind one address with the same browser never share a profile.
    """

    # None whenever tracking is not allowed: nothing identifies the visitor then.
    id: str | None
    session_id: str | None
    # Why tracking is off: "disabled", "gpc", "dnt", "opted-out", "no-consent"
    # or "bot".
    blocked_by: str | None
    # The visitor came without a valid visitor cookie: show the privacy notice,
    # and set the cookie on the response.
    is_new: bool

    @property
    def tracked(self) -> bool:
        return self.id is not None


def cookie_serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt="visitor-id")


def tracking_blocked_by() -> str | None:
    """Say which privacy signal or setting forbids tracking this request, if any."""
    config = current_app.config
    if not config["PERSONALIZATION_ENABLED"]:
        return "disabled"
    if request.headers.get("Sec-GPC", "").strip() == "1":
        return "gpc"
    if request.headers.get("DNT", "").strip() == "1":
        return "dnt"
    choice = request.cookies.get(TRACKING_COOKIE)
    if choice == "off":
        return "opted-out"
    if config["CONSENT_MODE"] == "opt-in" and choice != "on":
        return "no-consent"
    if SELF_DECLARED_BOT.search(request.headers.get("User-Agent", "")):
        return "bot"
    return None


def visitor_id_from_cookie() -> str | None:
    """Return the visitor id in the signed cookie, when present and valid."""
    raw = request.cookies.get(VISITOR_COOKIE)
    if not raw:
        return None
    try:
        value = cookie_serializer().loads(raw)
    except BadSignature:
        return None
    return value if isinstance(value, str) and VISITOR_ID.fullmatch(value) else None


def current_visitor() -> Visitor:
    """Resolve the visitor once per request: the cookie's, or a new one."""
    if "visitor" in g:
        return g.visitor
    blocked_by = tracking_blocked_by()
    if blocked_by:
        # In opt-in mode nothing is stored before consent; the same goes for
        # GPC, DNT, opt-out and crawlers.
        g.visitor = Visitor(None, None, blocked_by, is_new=False)
        return g.visitor
    from_cookie = visitor_id_from_cookie()
    if "sid" not in session:
        session["sid"] = secrets.token_hex(16)
    g.visitor = Visitor(
        id=from_cookie or new_visitor_id(),
        session_id=session["sid"],
        blocked_by=None,
        is_new=from_cookie is None,
    )
    return g.visitor


def experiment_arm() -> str | None:
    """The tracked visitor's arm of the A/B holdout; None when not tracked (GPC,
    DNT, opt-out: never assigned, never counted). The session keeps it after the
    first lookup, so pages cost no query; it is tied to the visitor id, so a
    visitor who was forgotten is assigned afresh."""
    visitor = current_visitor()
    if not visitor.tracked:
        return None
    cached = session.get("arm")
    if isinstance(cached, list) and len(cached) == 2 and cached[0] == visitor.id:
        return cached[1]
    try:
        arm = current_system().experiment_arm(visitor.id)
    except SQLAlchemyError as error:
        # No arm for this request: the page shows, unassigned, and tries next time.
        log.warning("experiment arm not assigned: %s", error.__class__.__name__)
        return None
    session["arm"] = [visitor.id, arm]
    return arm


def set_visitor_cookie(response):
    """Give a tracked visitor the first-party cookie that keeps their id stable.

    The cookie outlives IP changes (a phone moving between networks), so the
    visitor keeps their history. Signed, HttpOnly, SameSite=Lax.
    """
    visitor = g.get("visitor")
    if visitor and visitor.tracked and visitor.is_new:
        response.set_cookie(
            VISITOR_COOKIE,
            cookie_serializer().dumps(visitor.id),
            max_age=current_app.config["VISITOR_COOKIE_DAYS"] * 86400,
            httponly=True,
            samesite="Lax",
            secure=request.is_secure,
        )
    return response


def remember_tracking_choice(response, allowed: bool):
    """Keep the visitor's privacy choice in a cookie.

    Opting out stops all recording, but the visitor cookie stays: it is the only
    way "forget me" and "download my data" can find what was recorded before.
    """
    response.set_cookie(
        TRACKING_COOKIE,
        "on" if allowed else "off",
        max_age=365 * 86400,
        httponly=True,
        samesite="Lax",
        secure=request.is_secure,
    )
    return response


def forget_visitor_cookie(response):
    """Drop the visitor cookie and the tracking session (with the experiment arm
    it keeps, which names the visitor) after an erasure."""
    response.delete_cookie(VISITOR_COOKIE, samesite="Lax")
    session.pop("sid", None)
    session.pop("arm", None)
    return response


def address_rate_key() -> str:
    """Rate-limit key of the client's address: the proxy's view of it when proxies
    are trusted (ProxyFix), else the socket's, keyed so Redis never holds it."""
    return "address:" + current_system().address_key(request.remote_addr)


def visitor_rate_key() -> str:
    """Rate-limit key of the visitor (their cookie); untracked requests by address.

    A visitor who drops the cookie to start afresh is still held by the limit on
    their address.
    """
    visitor = current_visitor()
    return "visitor:" + visitor.id if visitor.tracked else address_rate_key()
