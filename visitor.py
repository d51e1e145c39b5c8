"""Who the anonymous visitor is, and whether they let us track them: the visitor
cookie, the keyed fingerprint, privacy signals (GPC, DNT, opt-out) and consent."""

import secrets
from dataclasses import dataclass

from flask import current_app, g, request, session
from itsdangerous import BadSignature, URLSafeSerializer

from personalization.identity import VISITOR_ID
from personalization_system import current_system

VISITOR_COOKIE = "antidote_visitor"
# "on": the visitor agreed to personalization (needed in opt-in mode);
# "off": the visitor opted out or declined.
TRACKING_COOKIE = "antidote_tracking"


@dataclass(frozen=True)
class Visitor:
    """The visitor behind this request, as far as their privacy choices allow."""

    # None whenever tracking is not allowed: nothing identifies the visitor then.
    id: str | None
    session_id: str | None
    # Why tracking is off: "disabled", "gpc", "dnt", "opted-out" or "no-consent".
    blocked_by: str | None
    # The visitor came without a valid visitor cookie: show the privacy notice,
    # and set the cookie on the response.
    is_new: bool
    # Also this browser's current fingerprint: erasure deletes both identities.
    fingerprint: str | None = None

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


def browser_fingerprint() -> str:
    """Fingerprint this request's browser; the IP comes from ProxyFix, if trusted."""
    return current_system().fingerprint(
        request.headers.get("User-Agent"),
        request.remote_addr,
        request.headers.get("Accept-Language"),
    )


def current_visitor() -> Visitor:
    """Resolve the visitor once per request: cookie first, then fingerprint."""
    if "visitor" in g:
        return g.visitor
    blocked_by = tracking_blocked_by()
    if blocked_by:
        # In opt-in mode nothing is fingerprinted before consent; the same goes
        # for GPC, DNT and opt-out.
        g.visitor = Visitor(None, None, blocked_by, is_new=False)
        return g.visitor
    from_cookie = visitor_id_from_cookie()
    fingerprint = browser_fingerprint()
    if "sid" not in session:
        session["sid"] = secrets.token_hex(16)
    g.visitor = Visitor(
        id=from_cookie or fingerprint,
        session_id=session["sid"],
        blocked_by=None,
        is_new=from_cookie is None,
        fingerprint=fingerprint,
    )
    return g.visitor


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
    """Keep the visitor's privacy choice in a cookie; opting out drops their id."""
    response.set_cookie(
        TRACKING_COOKIE,
        "on" if allowed else "off",
        max_age=365 * 86400,
        httponly=True,
        samesite="Lax",
        secure=request.is_secure,
    )
    if not allowed:
        response.delete_cookie(VISITOR_COOKIE, samesite="Lax")
    return response


def forget_visitor_cookie(response):
    """Drop the visitor cookie and the tracking session after an erasure."""
    response.delete_cookie(VISITOR_COOKIE, samesite="Lax")
    session.pop("sid", None)
    return response


def rate_limit_key() -> str:
    """Rate-limit per visitor; untracked requests by a keyed hash of their address.

    The hash keeps raw IP addresses out of the limiter's storage (Redis).
    """
    visitor = current_visitor()
    if visitor.tracked:
        return "visitor:" + visitor.id
    return "address:" + current_system().fingerprint(None, request.remote_addr, None)
