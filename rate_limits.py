"""Rate limits on the endpoints people or scripts could flood: tracking, feedback,
the consultation form and the admin sign-in. Counted in fixed windows with the
`limits` library, in Redis when RATELIMIT_STORAGE_URI (or REDIS_URL) names it,
else in each process's memory.

Flask-Limiter did this before. On the tracker's endpoints its per-request
machinery (hooks on every request, each limit's setting resolved and parsed
again, exemption scopes, contexts) cost a third of a tracking request's
instructions, several times the counting itself (BENCHMARKS.md). Here each
setting is parsed once per app, and a limited request makes one storage call
per limit; other requests pay nothing.

When the storage cannot be reached, counting goes on in this process's memory,
with a warning in the log, and the storage is tried again after
STORAGE_RETRY_SECONDS: a dead Redis costs a request one short timeout now and
then, never a 500 and never an event.
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps

from flask import Flask, current_app, make_response, request
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

log = logging.getLogger(__name__)

EXTENSION = "rate_limits"
STORAGE_RETRY_SECONDS = 30


@dataclass(frozen=True)
class Limit:
    """A limit: the setting that says how many (e.g. "5 per hour;20 per day")
    and whose requests count together (a function of the request)."""

    setting: str
    key: Callable[[], str]


class RateLimited(TooManyRequests):
    """429, saying when to try again (Retry-After, in seconds)."""

    def __init__(self, item: RateLimitItem, seconds: int):
        super().__init__(
            description=f"rate limit exceeded ({item}); try again in {seconds} s",
            retry_after=seconds,
        )


class RateLimits:
    """One app's counters (in app.extensions, so every app a process creates,
    as tests do, counts on its own)."""

    def __init__(self, config):
        self.config = config
        self.prefix = config.get("RATELIMIT_KEY_PREFIX", "")
        storage = storage_from_string(
            config["RATELIMIT_STORAGE_URI"], **config["RATELIMIT_STORAGE_OPTIONS"]
        )
        self.shared = FixedWindowRateLimiter(storage)
        self.local = FixedWindowRateLimiter(MemoryStorage())
        # Until when (time.monotonic) the shared storage is not tried again.
        self.shared_down_until = 0.0
        self.parsed: dict[str, list[RateLimitItem]] = {}

    def items(self, setting: str) -> list[RateLimitItem]:
        """The setting's limits, parsed once."""
        if setting not in self.parsed:
            self.parsed[setting] = parse_many(self.config[setting])
        return self.parsed[setting]

    def counter(self) -> FixedWindowRateLimiter:
        """The shared storage's, unless it failed in the last
        STORAGE_RETRY_SECONDS: then this process's memory."""
        if time.monotonic() < self.shared_down_until:
            return self.local
        return self.shared

    def ask(self, question: str, item: RateLimitItem, identifiers: tuple) -> bool:
        """hit (count one, and say whether it fits) or test (say whether one
        more would fit), on the shared storage or, if it fails, in memory."""
        counter = self.counter()
        try:
            return getattr(counter, question)(item, *identifiers)
        except Exception as error:  # whatever the storage raises: Redis, network
            if counter is self.local:
                raise
            log.warning(
                "Rate limit storage unreachable (%s): counting in this process's "
                "memory for %d s",
                error.__class__.__name__,
                STORAGE_RETRY_SECONDS,
            )
            self.shared_down_until = time.monotonic() + STORAGE_RETRY_SECONDS
            return getattr(self.local, question)(item, *identifiers)

    def check(self, limits: tuple[Limit, ...], count: bool = True) -> None:
        """Count this request against each limit (or, with count=False, only
        check there is room for it); raise RateLimited at the first that is
        spent."""
        spent = self.first_spent(limits, "hit" if count else "test")
        if spent:
            raise RateLimited(spent[0], self.retry_after(*spent))

    def count(self, limits: tuple[Limit, ...]) -> None:
        """Count this request against each limit, without refusing it: it has
        been answered (see rate_limited's count_when)."""
        self.first_spent(limits, "hit")

    def first_spent(self, limits: tuple[Limit, ...], question: str) -> tuple | None:
        """Ask each limit in turn; the first spent one (item, identifiers), if
        any: the limits after it are not asked."""
        for limit in limits:
            identifiers = (self.prefix, limit.key(), request.endpoint or "")
            for item in self.items(limit.setting):
                if not self.ask(question, item, identifiers):
                    return item, identifiers
        return None

    def retry_after(self, item: RateLimitItem, identifiers: tuple) -> int:
        """Seconds until the window of a spent limit starts afresh; the whole
        window if the storage cannot say."""
        seconds = item.get_expiry()
        try:
            seconds = self.counter().get_window_stats(item, *identifiers).reset_time
            seconds -= time.time()
        except Exception as error:  # the storage failed since the check
            log.warning("rate limit window unknown: %s", error.__class__.__name__)
        return max(1, math.ceil(seconds))


def init_rate_limits(app: Flask) -> None:
    app.extensions[EXTENSION] = RateLimits(app.config)


def rate_limited(*limits: Limit, count_when: Callable | None = None) -> Callable:
    """Decorate a view with limits: each request counts, or, with `count_when`,
    only those whose response it accepts (a failed sign-in), while any request
    is refused once a limit is spent."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def limited(*args, **kwargs):
            counters: RateLimits = current_app.extensions[EXTENSION]
            if count_when is None:
                counters.check(limits)
                return view(*args, **kwargs)
            counters.check(limits, count=False)
            response = make_response(view(*args, **kwargs))
            if count_when(response):
                counters.count(limits)
            return response

        return limited

    return decorate
