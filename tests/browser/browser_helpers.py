"""What the browser tests share: watching the tracker's requests, waiting for rows."""

import time

from helpers import count_stored

TRACK_PATH = "/personalization/track-interaction"


# Every interaction the site stored: in the log, or still in the aggregator's
# inbox (moved into the log within AGGREGATION_INTERVAL_SECONDS).
RECORDED = count_stored("1 = 1")


def wait_for_rows(site, sql, expected, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rows = site.query(sql)
        if len(rows) >= expected:
            return rows
        time.sleep(0.1)
    return site.query(sql)


def tracking_requests(page):
    sent = []
    page.on(
        "request",
        lambda request: sent.append(request) if TRACK_PATH in request.url else None,
    )
    return sent


def stay_on_page(page):
    """Keep link clicks from navigating, so several can be made on one page."""
    page.evaluate("window.addEventListener('click', e => e.preventDefault(), true)")
