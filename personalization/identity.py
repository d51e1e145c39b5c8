"""Visitor ids: a keyed fingerprint for cookieless requests, and keyed ids for
other systems' users, so no raw identifier is ever stored."""

import hashlib
import hmac
import re

VISITOR_ID_LENGTH = 32
# What a visitor id looks like (cookies, webhook hints): 32 lowercase hex digits.
VISITOR_ID = re.compile(rf"[0-9a-f]{{{VISITOR_ID_LENGTH}}}")


class Identity:
    """Turns what a browser or another system says about a visitor into a visitor id."""

    def __init__(self, key: str):
        self._key = key.encode()

    def fingerprint(
        self,
        user_agent: str | None,
        ip_address: str | None,
        accept_language: str | None,
    ) -> str:
        """A visitor id from what the browser sends, keyed (HMAC-SHA256).

        Keyed, because an unkeyed hash of an IPv4 address and a common user agent
        can be reversed by enumerating them; without the key it cannot.
        """
        return self._digest(
            "\n".join((user_agent or "", ip_address or "", accept_language or ""))
        )

    def external_id(self, source: str, raw_id: str) -> str:
        """Map another system's user or device id to a visitor id, with the same
        key as fingerprints, so raw third-party ids are never stored."""
        return self._digest(f"{source}\n{raw_id}")

    def _digest(self, message: str) -> str:
        digest = hmac.new(self._key, message.encode(), hashlib.sha256)
        return digest.hexdigest()[:VISITOR_ID_LENGTH]
