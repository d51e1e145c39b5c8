"""The engine's vocabulary: interaction types and their weights, the item key, and
the Interaction value every source (tracker, page views, webhooks) is turned into."""

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

# What the tracker may report.
INTERACTION_TYPES = (
    *("view", "click", "search", "form_submit", "not_interested"),
    # How long a page was visible (metadata.seconds): time spent, not interest,
    # so it carries no weight; the dashboard reads it.
    "engaged",
)
# The longest engaged time one event reports: a tab left open is not reading.
MAX_ENGAGED_SECONDS = 1800
# Kinds of catalog item an interaction can be about ("page" is none of them); a
# bare slug from another system names the first kind that has it.
ITEM_KINDS = ("procedure", "category", "doctor", "package")
TARGET_TYPES = (*ITEM_KINDS, "page")
# Events that list what was shown rather than one item acted on.
IMPRESSION_TYPES = frozenset({"initial_impression", "scroll_impression"})
# How much one interaction adds to a visitor's interest (0..1 scale). One table for
# site tracking, Amplitude events and Personalize's eventValue. The Amplitude rows
# are Amplitude's weight scale (3.0 ... -2.5) x 0.3, so an Amplitude click equals a
# site click. Negative weights lower affinity (never below 0) and demote the item.
DEFAULT_INTERACTION_WEIGHTS = {
    "view": 0.1,
    "search": 0.2,
    "click": 0.3,
    "form_submit": 0.5,
    "donate": 0.9,
    "fundraise": 0.9,
    "upvote": 0.6,
    "share": 0.6,
    "bookmark": 0.54,
    "download": 0.45,
    "comment": 0.45,
    "scroll_impression": 0.21,
    "initial_impression": 0.09,
    "hide": -0.15,
    "not_interested": -0.24,
    "downvote": -0.3,
    "flag_content": -0.75,
}
MAX_METADATA_BYTES = 2048
# A recommendation list's id, as pages and the API give it (impressions.py).
LIST_ID = re.compile(r"[0-9a-f]{16}")
# The longest list a page or the API shows: a card's position is at most this.
MAX_LIST_POSITION = 50
# The fields of a tracker event; parse_event refuses any other.
EVENT_FIELDS = frozenset({"interaction_type", "target_type", "target_id", "metadata"})


class ItemKey(NamedTuple):
    """A catalog item: its kind and id. Written "procedure:12" wherever it leaves
    the engine (Personalize, exports, impressions)."""

    kind: str
    id: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, text: str) -> "ItemKey | None":
        """Read "procedure:12"; None when it is not a catalog item key."""
        kind, _, number = text.partition(":")
        if kind not in ITEM_KINDS or not is_decimal(number) or len(number) > 10:
            return None
        return cls(kind, int(number))


@dataclass(frozen=True)
class Interaction:
    """One thing a visitor did: a type, the item it was about (None for a page),
    and when, if not now (webhook events arrive late)."""

    type: str
    item: ItemKey | None = None
    metadata: dict | None = None
    occurred_at: datetime | None = None
    # Items shown with it, forwarded to Personalize as its impression.
    impression: tuple[ItemKey, ...] = ()
    # False when Personalize gets it folded into another event's impression.
    stream: bool = True


class VisitorInteraction(NamedTuple):
    """An interaction and whose it is."""

    visitor_id: str
    session_id: str
    interaction: Interaction


@dataclass
class ExternalEvent:
    """An event from another system (Amplitude), read but not yet resolved: its
    visitor and items are still named in that system's terms."""

    # Which system sent it ("amplitude"): kept in metadata, and keys its visitor ids.
    source: str
    index: int
    type: str
    occurred_at: datetime
    session_id: str
    # "procedure:12", "procedure:botox", a bare slug ...
    item_refs: list[str]
    dedup_key: str
    # A site visitor id the page handed to the other system, if any.
    visitor_hint: str | None
    user_id: str | None
    device_id: str | None
    # How many items the event named, before repeats and any past the cap went.
    items_listed: int = 0


# What can be wrong with a tracker event, in a word (metrics labels, the admin
# dashboard's data quality page), beside the message the client reads.
REJECTION_REASONS = ("malformed", "unknown_type", "bad_target", "bad_metadata")


class EventError(ValueError):
    """An event is malformed; the message says what is wrong, for the client,
    and `reason` which of REJECTION_REASONS it is."""

    def __init__(self, message: str, reason: str = "bad_metadata"):
        super().__init__(message)
        self.reason = reason


def parse_event(raw: Any) -> Interaction:
    """Check one tracker event's shape and types; raise EventError saying what is
    wrong. Whether its item exists is checked later, against the catalog."""
    if not isinstance(raw, dict):
        raise EventError("event must be a JSON object", "malformed")
    unknown = set(raw) - EVENT_FIELDS
    if unknown:
        raise EventError(f"unknown field(s): {', '.join(sorted(unknown))}", "malformed")
    interaction_type = raw.get("interaction_type")
    if interaction_type not in INTERACTION_TYPES:
        raise EventError(
            f"interaction_type must be one of {', '.join(INTERACTION_TYPES)}",
            "unknown_type",
        )
    item = parse_target(raw.get("target_type"), raw.get("target_id"))
    metadata = parse_metadata(raw.get("metadata"))
    if interaction_type == "search":
        query = (metadata or {}).get("query")
        if not isinstance(query, str) or not query.strip():
            raise EventError("a search event needs metadata.query, a non-empty string")
        if not is_storable_text(query):  # it is searched for in the database
            raise EventError("metadata.query must not contain NUL characters")
    metadata = dict(metadata or {})
    check_card(metadata)
    if interaction_type == "engaged":
        seconds = whole_number(metadata.get("seconds"))
        if seconds is None or not 1 <= seconds <= MAX_ENGAGED_SECONDS:
            raise EventError(
                "an engaged event needs metadata.seconds, a whole number from 1 "
                f"to {MAX_ENGAGED_SECONDS}"
            )
        metadata["seconds"] = seconds
    return Interaction(interaction_type, item, metadata or None)


def check_card(metadata: dict) -> None:
    """A recommended card's list id and position, when an event names them:
    exactly as pages give them (a position of 2.0 is 2), or the event is refused
    (reports attribute clicks by them; nothing else may pass for one)."""
    list_id = metadata.get("list_id")
    if list_id is not None and (
        not isinstance(list_id, str) or not LIST_ID.fullmatch(list_id)
    ):
        raise EventError("metadata.list_id must be the list_id a page or the API gave")
    if "position" in metadata and metadata["position"] is not None:
        position = whole_number(metadata["position"])
        if position is None or not 1 <= position <= MAX_LIST_POSITION:
            raise EventError(
                f"metadata.position must be a whole number from 1 to "
                f"{MAX_LIST_POSITION}"
            )
        metadata["position"] = position


def whole_number(value: Any) -> int | None:
    """An integer as JSON may write it (7, or 7.0: JSON has one number type);
    None for anything else, booleans included."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def parse_target(target_type: Any, target_id: Any) -> ItemKey | None:
    """The item an event names; None for a page."""
    if target_type not in TARGET_TYPES:
        raise EventError(
            f"target_type must be one of {', '.join(TARGET_TYPES)}", "bad_target"
        )
    if target_type == "page":
        if target_id is not None:
            raise EventError(
                "target_id must be null for target_type page", "bad_target"
            )
        return None
    target_id = whole_number(target_id)
    if target_id is None:
        raise EventError(
            f"target_id must be an integer for target_type {target_type}", "bad_target"
        )
    if not 0 < target_id < 2**31:
        raise EventError("target_id is out of range", "bad_target")
    return ItemKey(target_type, target_id)


def parse_metadata(metadata: Any) -> dict | None:
    """Check an event's metadata: a JSON object of bounded size, valid Unicode."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise EventError("metadata must be a JSON object")
    try:
        size = len(encode_metadata(metadata).encode())
    except UnicodeEncodeError:  # JSON lets "\ud800" through; UTF-8 does not
        raise EventError("metadata holds text that is not valid Unicode") from None
    if size > MAX_METADATA_BYTES:
        raise EventError(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    return metadata


def is_decimal(text: str) -> bool:
    """Whether text is a whole number in ASCII digits. str.isdigit() alone also
    accepts "²" and "٣", which int() then refuses."""
    return text.isascii() and text.isdigit()


def is_storable_text(text: str) -> bool:
    """Whether text can reach the database: valid UTF-8 and no NUL characters.

    JSON lets lone surrogates ("\\ud800") and NUL through; UTF-8 encoding and
    PostgreSQL refuse them, and an id or a query carrying one matches nothing.
    """
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# Built once: json.dumps with options builds an encoder per call (a webhook
# encodes a thousand rows' metadata per request).
COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_metadata(metadata: dict) -> str:
    """Serialize metadata compactly, as it is stored in extra_data."""
    return COMPACT_JSON.encode(metadata)


def decode_metadata(extra_data: str | None) -> dict | None:
    """Metadata as encode_metadata stored it (None when there was none)."""
    return json.loads(extra_data) if extra_data else None
