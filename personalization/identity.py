"""Visitor ids and the keyed hashes around them: a random id for each browser (the
first-party cookie carries it), keyed ids for other systems' users, a keyed key
for client addresses, and the signed alias pages hand to Amplitude."""

import hashlib
import hmac
import ipaddress
import re
import secrets

VISITOR_ID_LENGTH = 32
# What a visitor id looks like: 32 lowercase hex digits.
VISITOR_ID = re.compile(rf"[0-9a-f]{{{VISITOR_ID_LENGTH}}}")
# A visitor id, a dash and its signature: what Amplitude's SDK is given.
ALIAS_SIGNATURE_LENGTH = 32
ALIAS = re.compile(
    rf"([0-9a-f]{{{VISITOR_ID_LENGTH}}})-([0-9a-f]{{{ALIAS_SIGNATURE_LENGTH}}})"
)


def network_of(address: str | None) -> str:
    """An address cut to its network (/24, or /48 for IPv6): 203.0.113.7 ->
    203.0.113.0. What access logs keep, and what admin login limits count by."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return "-"
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


def new_visitor_id() -> str:
    """A fresh visitor id: random, so no two browsers ever share one."""
    return secrets.token_hex(VISITOR_ID_LENGTH // 2)


class Identity:
    """Keyed hashes of identifiers (HMAC-SHA256): without the key they can be
    neither reversed by enumerating inputs nor forged."""

    def __init__(self, key: str):
        self._key = key.encode()

    def address_key(self, address: str | None) -> str:
        """A client address as a key (rate limits), never the address itself."""
        return self._digest("address", address or "")

    def external_id(self, source: str, raw_id: str) -> str:
        """Map another system's user or device id to a visitor id, so raw
        third-party ids are never stored."""
        return self._digest(source, raw_id)

    def alias(self, visitor_id: str) -> str:
        """The visitor id signed: what the page hands Amplitude, so events that
        come back can name their visitor, and nobody can name another one."""
        signature = self._digest("amplitude alias", visitor_id)[:ALIAS_SIGNATURE_LENGTH]
        return f"{visitor_id}-{signature}"

    def visitor_of_alias(self, alias: str) -> str | None:
        """The visitor an alias names, if the site signed it; else None."""
        match = ALIAS.fullmatch(alias)
        if not match:
            return None
        visitor_id, signature = match.groups()
        expected = self.alias(visitor_id).rsplit("-", 1)[1]
        return visitor_id if hmac.compare_digest(signature, expected) else None

    def _digest(self, purpose: str, value: str) -> str:
        message = f"{purpose}\n{value}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256)
        return digest.hexdigest()[:VISITOR_ID_LENGTH]
