"""The `webhooks` blueprint: Amplitude events in, authenticated, CSRF-exempt."""

import hmac
import json
import logging
from collections import Counter

from flask import Blueprint, abort, current_app, request

from amplitude import (
    MAX_EVENTS,
    SOURCE,
    PayloadError,
    read_events,
    summary,
    trimmed,
    unpack_payload,
)
from models import utcnow
from personalization_system import current_system

log = logging.getLogger(__name__)

webhooks = Blueprint("webhooks", __name__, url_prefix="/webhooks")

MAX_BODY_BYTES = 1024 * 1024


def presented_token() -> str | None:
    """The secret the caller sent: `Authorization: Bearer …` or `X-Webhook-Token`."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-Webhook-Token") or None


def token_is_valid(token: str, secrets: list[str]) -> bool:
    """Compare in constant time against the current and the previous secret."""
    matches = [
        hmac.compare_digest(token.encode(), secret.encode()) for secret in secrets
    ]
    return any(matches)


@webhooks.post("/amplitude/")
def amplitude():
    """Receive Amplitude events (any payload shape) and feed personalization."""
    config = current_app.config
    secrets = [
        s
        for s in (
            config["AMPLITUDE_WEBHOOK_SECRET"],
            config["AMPLITUDE_WEBHOOK_SECRET_PREVIOUS"],
        )
        if s
    ]
    if not config["AMPLITUDE_WEBHOOK_SECRET"]:
        return {"error": "webhook not configured"}, 503
    token = presented_token()
    if token is None or not token_is_valid(token, secrets):
        return {"error": "missing or wrong webhook token"}, 401
    if (request.content_length or 0) > MAX_BODY_BYTES:
        abort(413, description=f"body is larger than {MAX_BODY_BYTES} bytes")
    body = request.get_data()
    if len(body) > MAX_BODY_BYTES:
        abort(413, description=f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        payload = json.loads(body)
        events, skip_reason = unpack_payload(payload)
    except (ValueError, RecursionError) as error:
        message = str(error) if isinstance(error, PayloadError) else "body is not JSON"
        return {"error": message}, 400
    if len(events) > MAX_EVENTS:
        return {"error": f"a request holds at most {MAX_EVENTS} events"}, 413
    system = current_system()
    received_at = utcnow()
    readable, skipped = read_events(
        events,
        system.settings.interaction_weights,
        received_at,
        system.settings.interaction_retention_days,
        skip_reason,
    )
    recorded = system.record_external(
        readable,
        received_at,
        Counter((SOURCE, error["code"]) for error in skipped),
    )
    result = summary(
        recorded.processed,
        skipped + recorded.errors,
        recorded.duplicates,
        trimmed(readable),
    )
    log.info(
        "amplitude webhook: %d processed, %d skipped, %d duplicates",
        result["processed"],
        result["skipped"],
        result["duplicates"],
    )
    return result
