"""Visitor identity and the tracking endpoint: what is stored, what is refused."""

import hashlib
import json
import re

import pytest

from app import create_app
from helpers import Browser, app_config, catalog_id, stored_interactions
from models import Doctor, Procedure
from personalization.identity import Identity

UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0"


def click(target_type, target_id, **extra):
    return {
        "interaction_type": "click",
        "target_type": target_type,
        "target_id": target_id,
        **extra,
    }


# Identity


def test_keyed_hashes_are_stable_keyed_and_not_plain_hashes():
    identity = Identity("key-one")
    first = identity.address_key("198.51.100.4")
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first == identity.address_key("198.51.100.4")
    assert first != identity.address_key("198.51.100.5")
    assert first != Identity("key-two").address_key("198.51.100.4")
    # Not a plain hash anyone could recompute by enumerating addresses.
    for text in ("198.51.100.4", "address\n198.51.100.4"):
        assert first != hashlib.md5(text.encode()).hexdigest()
        assert first != hashlib.sha256(text.encode()).hexdigest()[:32]


def test_aliases_name_a_visitor_only_when_the_site_signed_them():
    identity = Identity("key-one")
    visitor = "ab" * 16
    alias = identity.alias(visitor)
    assert identity.visitor_of_alias(alias) == visitor
    assert Identity("key-two").visitor_of_alias(alias) is None
    assert identity.visitor_of_alias(visitor) is None
    assert identity.visitor_of_alias(f"{'cd' * 16}-{alias.split('-')[1]}") is None
    assert identity.visitor_of_alias("not an alias") is None


def test_keys_derive_from_secret_key_unless_set(database_url):
    def alias(**config):
        app = create_app(app_config(database_url, **config))
        return app.extensions["personalization"].amplitude_alias("ab" * 16)

    assert alias(SECRET_KEY="a") != alias(SECRET_KEY="b")
    assert alias(SECRET_KEY="a", FINGERPRINT_SECRET="f") == alias(
        SECRET_KEY="b", FINGERPRINT_SECRET="f"
    )


def visitor_of_fresh_browser(app, address="203.0.113.7", **headers) -> str:
    """Visit the home page from a browser with no cookies; return its stored id."""
    before = len(stored_interactions(app))
    Browser(app, address=address, headers=headers).get("/")
    return stored_interactions(app)[before].user_id


def test_two_people_behind_one_address_never_share_a_profile(catalog):
    """Same browser, same language, same public address (an office, a household,
    a carrier's NAT): two visitors from the first request on. One's interests
    never reach the other's pages, and one's "forget me" leaves the other's
    history intact."""
    alice, bob = Browser(catalog), Browser(catalog)
    assert alice.headers == bob.headers and alice.address == bob.address
    alice.get("/")
    bob.get("/")
    assert alice.cookie("antidote_visitor") != bob.cookie("antidote_visitor")
    hair = [
        catalog_id(catalog, Procedure, slug)
        for slug in ("fue-hair-transplant", "prp-hair-restoration")
    ]
    for pid in hair:
        assert alice.track(click("procedure", pid)).status_code == 202
    api = "/personalization/recommendations/procedures"
    assert alice.get(api).get_json()["personalized"] is True

    def ranked(visitor):  # every answer names its own list: compare the rest
        return {k: v for k, v in visitor.get(api).get_json().items() if k != "list_id"}

    assert ranked(bob) == ranked(Browser(catalog))
    assert bob.get(api).get_json()["personalized"] is False
    alice_rows = [r for r in stored_interactions(catalog) if r.target_id in hair]
    assert len(alice_rows) == 2 and len({r.user_id for r in alice_rows}) == 1

    forgotten = bob.post("/personalization/forget").get_json()["deleted"]
    assert forgotten["interactions"] == 1  # Bob's own page view, nothing else
    assert [r for r in stored_interactions(catalog) if r.target_id in hair] == (
        alice_rows
    )
    assert alice.get(api).get_json()["personalized"] is True


def test_a_browser_without_the_cookie_is_a_new_visitor_every_time(catalog):
    """Nothing derived from what a browser sends can hand it someone's profile: a
    client that refuses cookies starts afresh on each request."""
    first = visitor_of_fresh_browser(catalog)
    second = visitor_of_fresh_browser(catalog)
    assert first != second


def test_crawlers_that_say_so_leave_no_trace(catalog):
    crawler = Browser(catalog, headers={"User-Agent": "Googlebot/2.1"})
    assert crawler.get("/procedures/botox").status_code == 200
    assert crawler.cookie("antidote_visitor") is None
    assert stored_interactions(catalog) == []


def test_visitor_cookie_keeps_the_id_when_the_address_changes(catalog):
    phone = Browser(catalog, address="198.51.100.10")
    phone.get("/")
    phone.address = "203.0.113.99"  # moved from wifi to mobile data
    phone.get("/procedures/botox")
    ids = {row.user_id for row in stored_interactions(catalog)}
    assert len(ids) == 1
    # Without the cookie, the new address alone would have made a new visitor.
    assert visitor_of_fresh_browser(catalog, address="203.0.113.99") not in ids


def test_visitor_cookie_is_signed_httponly_and_lax(catalog, browser):
    response = browser.get("/")
    header = next(
        h for h in response.headers.getlist("Set-Cookie") if "antidote_visitor" in h
    )
    assert "HttpOnly" in header and "SameSite=Lax" in header
    tampered = Browser(catalog, address="198.51.100.77")
    tampered.client.set_cookie("antidote_visitor", "f" * 32)  # unsigned: ignored
    tampered.get("/")
    ids = [row.user_id for row in stored_interactions(catalog)]
    assert "f" * 32 not in ids
    assert len(set(ids)) == 2


def test_session_id_is_kept_across_requests(catalog, browser):
    from sqlalchemy import select

    from models import UserInteraction, db

    browser.get("/")
    browser.get("/procedures/botox")
    with catalog.app_context():
        sessions = set(db.session.scalars(select(UserInteraction.session_id)))
    assert len(sessions) == 1
    assert 0 < len(sessions.pop()) <= 64


def test_page_views_are_logged_with_their_target(catalog, browser):
    botox = catalog_id(catalog, Procedure, "botox")
    browser.get("/")
    browser.get("/procedures/botox")
    browser.get("/privacy")  # never logged
    browser.get("/procedures/nope")  # 404: nothing viewed
    rows = stored_interactions(catalog)
    assert [(r.interaction_type, r.target_type, r.target_id) for r in rows] == [
        ("view", "page", None),
        ("view", "procedure", botox),
    ]


# The endpoint


def test_single_event_is_accepted(catalog, browser):
    botox = catalog_id(catalog, Procedure, "botox")
    response = browser.track(click("procedure", botox, metadata={"from": "home"}))
    assert response.status_code == 202
    assert response.get_json() == {"accepted": 1, "rejected": []}
    assert stored_interactions(catalog)[-1][1:] == ("click", "procedure", botox)


def test_batch_keeps_valid_events_and_lists_rejections(catalog, browser):
    botox = catalog_id(catalog, Procedure, "botox")
    doctor = catalog_id(catalog, Doctor, "dr-sofia-vargas")
    response = browser.track(
        click("procedure", botox),
        click("procedure", 999_999),
        {
            "interaction_type": "search",
            "target_type": "page",
            "metadata": {"query": "lips"},
        },
        click("doctor", doctor),
        {"interaction_type": "hover", "target_type": "procedure", "target_id": botox},
    )
    assert response.status_code == 202
    body = response.get_json()
    assert body["accepted"] == 3
    assert body["rejected"] == [
        {
            "index": 1,
            "error": "no procedure with id 999999",
            "reason": "unknown_item",
        },
        {
            "index": 4,
            "error": "interaction_type must be one of view, click, search, "
            "form_submit, not_interested, engaged",
            "reason": "unknown_type",
        },
    ]
    kinds = [r.interaction_type for r in stored_interactions(catalog)]
    assert kinds.count("click") == 2 and kinds.count("search") == 1


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ("not an object", "event must be a JSON object"),
        (None, "event must be a JSON object"),
        ({"interaction_type": "view"}, "target_type must be one of"),
        (
            {"interaction_type": "view", "target_type": "clinic", "target_id": 1},
            "target_type must be one of",
        ),
        (
            {"interaction_type": "click", "target_type": "procedure"},
            "target_id must be an integer",
        ),
        (
            {"interaction_type": "click", "target_type": "procedure", "target_id": "1"},
            "target_id must be an integer",
        ),
        (
            {
                "interaction_type": "click",
                "target_type": "procedure",
                "target_id": True,
            },
            "target_id must be an integer",
        ),
        (
            {"interaction_type": "click", "target_type": "procedure", "target_id": -3},
            "target_id is out of range",
        ),
        (
            {"interaction_type": "view", "target_type": "page", "target_id": 4},
            "target_id must be null",
        ),
        (
            {"interaction_type": "view", "target_type": "page", "metadata": [1]},
            "metadata must be a JSON object",
        ),
        (
            {
                "interaction_type": "view",
                "target_type": "page",
                "metadata": {"x": "y" * 2100},
            },
            "metadata is larger than 2048 bytes",
        ),
        (
            {"interaction_type": "search", "target_type": "page", "metadata": {}},
            "a search event needs metadata.query",
        ),
        (
            {"interaction_type": "view", "target_type": "page", "user_id": "x"},
            "unknown field(s): user_id",
        ),
        *(
            (
                {
                    "interaction_type": "engaged",
                    "target_type": "page",
                    "metadata": metadata,
                },
                "an engaged event needs metadata.seconds",
            )
            for metadata in (None, {}, {"seconds": 0}, {"seconds": 1801})
            + ({"seconds": 2.5}, {"seconds": True}, {"seconds": "9"})
        ),
    ],
)
def test_invalid_events_are_rejected_with_the_reason(catalog, browser, event, message):
    response = browser.post(
        "/personalization/track-interaction", json={"events": [event]}
    )
    assert response.status_code == 400
    body = response.get_json()
    assert body["accepted"] == 0 and body["error"] == "no valid events"
    assert body["rejected"][0]["index"] == 0
    assert message in body["rejected"][0]["error"]
    assert stored_interactions(catalog) == []


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("{not json", 400, "body is not valid JSON"),
        ("[1, 2]", 400, "body must be a JSON object"),
        ('{"events": {}}', 400, '"events" must be a non-empty array'),
        ('{"events": []}', 400, '"events" must be a non-empty array'),
        ('{"events": [], "extra": 1}', 400, 'only the field "events"'),
        ("[" * 50_000 + "]" * 50_000, 413, None),
        ("[" * 20_000 + "]" * 20_000, 400, "body is not valid JSON"),
    ],
)
def test_malformed_bodies_get_a_clear_error(catalog, browser, body, status, message):
    response = browser.post(
        "/personalization/track-interaction",
        data=body,
        content_type="application/json",
    )
    assert response.status_code == status
    assert response.is_json and "error" in response.get_json()
    if message:
        assert message in response.get_json()["error"]
    assert stored_interactions(catalog) == []


def test_batches_are_capped_at_50_events(catalog, browser):
    botox = catalog_id(catalog, Procedure, "botox")
    response = browser.track(*[click("procedure", botox)] * 51)
    assert response.status_code == 400
    assert "at most 50" in response.get_json()["error"]
    assert browser.track(*[click("procedure", botox)] * 50).get_json()["accepted"] == 50


def test_bodies_over_64_kb_are_refused(catalog, browser):
    botox = catalog_id(catalog, Procedure, "botox")
    events = [
        click("procedure", botox, metadata={"pad": "x" * 1500}) for _ in range(45)
    ]
    response = browser.track(*events)
    assert response.status_code == 413
    assert "error" in response.get_json()
    assert stored_interactions(catalog) == []


def test_wrong_content_type_is_refused(catalog, browser):
    response = browser.post(
        "/personalization/track-interaction",
        data='{"interaction_type": "view", "target_type": "page"}',
        content_type="text/plain",
    )
    assert response.status_code == 415
    assert "application/json" in response.get_json()["error"]


def test_tracking_without_the_csrf_token_is_refused(catalog):
    client = catalog.test_client()
    client.get("/")
    response = client.post(
        "/personalization/track-interaction",
        json={"interaction_type": "view", "target_type": "page"},
    )
    assert response.status_code == 403
    assert "CSRF" in response.get_json()["error"]
    assert [
        r for r in stored_interactions(catalog) if r.interaction_type != "view"
    ] == []


def test_a_tab_left_open_for_hours_keeps_tracking(catalog, browser, monkeypatch):
    """The CSRF token lives as long as the session: Flask-WTF's default hour made
    an open tab's tracker fail with 403, silently."""
    from itsdangerous.timed import TimestampSigner

    token = browser.csrf_token()
    issued = TimestampSigner.get_timestamp
    monkeypatch.setattr(
        TimestampSigner, "get_timestamp", lambda self: issued(self) + 6 * 3600
    )
    assert browser.csrf_token() == token
    response = browser.track({"interaction_type": "view", "target_type": "page"})
    assert response.status_code == 202


def test_tracking_is_rate_limited_per_visitor(database_url, catalog):
    app = create_app(app_config(database_url, TRACKING_RATE_LIMIT="3 per minute"))
    visitor = Browser(app)
    event = {"interaction_type": "view", "target_type": "page"}
    for _ in range(3):
        accepted = visitor.track(event)
        assert accepted.status_code == 202
        # No X-RateLimit-* headers: each would cost a storage read per request.
        assert not [h for h in accepted.headers if h[0].startswith("X-RateLimit")]
    refused = visitor.track(event)
    assert refused.status_code == 429
    # When the minute's window starts afresh.
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert "error" in refused.get_json()
    # Another visitor is not affected.
    assert Browser(app, address="198.51.100.200").track(event).status_code == 202


def test_a_refusal_says_to_wait_the_whole_window_when_the_storage_fails(
    database_url, catalog, monkeypatch
):
    """If the storage cannot say when the window ends (it failed after the
    check), Retry-After is the whole window, and the answer is still a 429."""
    from limits.strategies import FixedWindowRateLimiter

    def unreachable(*args):
        raise ConnectionError("storage gone")

    app = create_app(app_config(database_url, TRACKING_RATE_LIMIT="1 per hour"))
    visitor = Browser(app)
    assert statuses([visitor]) == [202]
    monkeypatch.setattr(FixedWindowRateLimiter, "get_window_stats", unreachable)
    refused = visitor.track(PAGE_VIEW)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "3600"


PAGE_VIEW = {"interaction_type": "view", "target_type": "page"}


def statuses(browsers) -> list[int]:
    return [browser.track(PAGE_VIEW).status_code for browser in browsers]


def test_dropping_the_cookie_does_not_escape_the_address_limit(database_url, catalog):
    """A client that starts afresh on every request (new cookie, new user agent)
    is a new visitor each time, but its address is the same."""
    app = create_app(
        app_config(database_url, TRACKING_RATE_LIMIT_PER_ADDRESS="4 per minute")
    )
    fresh = [Browser(app, headers={"User-Agent": f"Agent/{i}"}) for i in range(5)]
    assert statuses(fresh) == [202, 202, 202, 202, 429]
    assert statuses([Browser(app, address="198.51.100.200")]) == [202]


def test_forwarded_for_is_ignored_without_trusted_proxies(database_url, catalog):
    app = create_app(
        app_config(database_url, TRACKING_RATE_LIMIT_PER_ADDRESS="1 per minute")
    )
    forged = [
        Browser(app, headers={"X-Forwarded-For": address})
        for address in ("192.0.2.1", "192.0.2.2")
    ]
    assert statuses(forged) == [202, 429]  # one socket address, one bucket


def test_forwarded_for_is_honoured_behind_a_trusted_proxy(database_url, catalog):
    app = create_app(
        app_config(
            database_url,
            TRUSTED_PROXY_COUNT=1,
            TRACKING_RATE_LIMIT_PER_ADDRESS="1 per minute",
        )
    )
    clients = [
        Browser(app, headers={"X-Forwarded-For": address})
        for address in ("192.0.2.1", "192.0.2.2", "6.6.6.6, 192.0.2.1")
    ]
    # A client can prepend addresses, but only the proxy's entry is trusted.
    assert statuses(clients) == [202, 202, 429]


def redis_or_skip() -> str:
    import redis

    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.ConnectionError as error:
        from helpers import skip_or_fail

        skip_or_fail(f"Redis not reachable on 127.0.0.1:6379: {error}")
    return url


def test_workers_share_one_count_in_redis(database_url, catalog, monkeypatch):
    """Two app instances stand for two workers: with REDIS_URL set (the
    production setting) the limit is the setting, not workers x the setting."""
    import secrets

    from config import settings_from_environment

    monkeypatch.setenv("REDIS_URL", redis_or_skip())
    settings = settings_from_environment("/nonexistent")
    assert settings["RATELIMIT_STORAGE_URI"] == "redis://127.0.0.1:6379/0"
    # One deployment (one prefix), fresh for this test.
    prefix = f"antidote-test-{secrets.token_hex(4)}"
    workers = [
        create_app(
            app_config(
                database_url,
                RATELIMIT_STORAGE_URI=settings["RATELIMIT_STORAGE_URI"],
                RATELIMIT_KEY_PREFIX=prefix,
                TRACKING_RATE_LIMIT="2 per minute",
            )
        )
        for _ in range(2)
    ]
    first = Browser(workers[0])
    first.csrf_token()
    second = first.new_tab(workers[1])
    assert statuses([first, second, first]) == [202, 202, 429]


def test_tracking_keeps_working_when_redis_is_down(database_url, catalog, caplog):
    app = create_app(
        app_config(
            database_url,
            RATELIMIT_STORAGE_URI="redis://127.0.0.1:1/0",  # nothing listens there
            TRACKING_RATE_LIMIT="2 per minute",
        )
    )
    visitor = Browser(app)
    assert statuses([visitor, visitor]) == [202, 202]
    assert len(stored_interactions(app)) == 2
    assert "Rate limit storage unreachable" in caplog.text
    # Limits still hold, per process, until Redis is back.
    assert statuses([visitor]) == [429]


def test_counting_goes_back_to_redis_once_it_answers_again(
    database_url, catalog, caplog, monkeypatch
):
    """After a failure, each process counts in its memory for
    STORAGE_RETRY_SECONDS, then tries the shared storage again."""
    import rate_limits

    app = create_app(app_config(database_url, TRACKING_RATE_LIMIT="3 per minute"))
    counters = app.extensions[rate_limits.EXTENSION]
    shared = counters.shared
    failures = []

    class Flaky:
        """The shared storage, down for its first call."""

        def hit(self, *args):
            if not failures:
                failures.append(args)
                raise ConnectionError("Redis is restarting")
            return shared.hit(*args)

        def __getattr__(self, name):
            return getattr(shared, name)

    counters.shared = Flaky()
    visitor = Browser(app)
    assert statuses([visitor]) == [202]  # counted in memory
    assert "Rate limit storage unreachable (ConnectionError)" in caplog.text
    assert statuses([visitor]) == [202]  # still in memory: not retried yet
    assert len(failures) == 1
    monkeypatch.setattr(counters, "shared_down_until", 0.0)  # the retry time
    # Back on the shared storage, which has not seen this visitor yet.
    assert statuses([visitor] * 4) == [202, 202, 202, 429]


def test_pages_never_touch_the_rate_limit_storage(database_url, catalog, caplog):
    """Only limited endpoints count: a dead Redis costs a page nothing, not
    even a timeout."""
    app = create_app(
        app_config(database_url, RATELIMIT_STORAGE_URI="redis://127.0.0.1:1/0")
    )
    visitor = Browser(app)
    for path in ("/", "/procedures/botox", "/search?q=lips"):
        assert visitor.get(path).status_code == 200
    assert "Rate limit storage unreachable" not in caplog.text


def test_engaged_time_is_stored_against_the_page_item(catalog, browser):
    botox = catalog_id(catalog, Procedure, "botox")
    response = browser.track(
        {
            "interaction_type": "engaged",
            "target_type": "procedure",
            "target_id": botox,
            # JSON has one number type: 42.0 is the whole number 42.
            "metadata": {"seconds": 42.0, "path": "/procedures/botox"},
        }
    )
    assert response.status_code == 202, response.get_json()
    stored = [row[1:] for row in stored_interactions(catalog) if row[1] == "engaged"]
    assert stored == [("engaged", "procedure", botox)]
    with catalog.app_context():
        from models import UserInteraction, db

        extra = db.session.scalar(
            db.select(UserInteraction.extra_data).where(
                UserInteraction.interaction_type == "engaged"
            )
        )
    assert json.loads(extra)["seconds"] == 42 and "42.0" not in extra


def test_rejections_are_counted_per_day_and_reason(catalog, browser):
    from sqlalchemy import select

    from models import RejectedEventCount, db

    browser.track(click("procedure", 999_999), {"interaction_type": "hover"})
    browser.track(click("procedure", 999_998))
    with catalog.app_context():
        counts = db.session.execute(
            select(
                RejectedEventCount.source,
                RejectedEventCount.reason,
                RejectedEventCount.count,
            ).order_by(RejectedEventCount.reason)
        ).all()
    assert counts == [("tracker", "unknown_item", 2), ("tracker", "unknown_type", 1)]


def test_an_item_stays_known_for_its_time_from_the_lookup_not_from_its_last_use(
    catalog,
):
    """Tracking checks items against the catalog once a minute per process: an item
    clicked all day is still looked up again, so one deleted since is refused."""
    from sqlalchemy import event

    from models import db
    from personalization.events import ItemKey
    from personalization.items import KNOWN_ITEM_SECONDS, Items

    now = [0.0]
    botox = ItemKey("procedure", catalog_id(catalog, Procedure, "botox"))
    with catalog.app_context():
        items = Items(db.session, timer=lambda: now[0])
        lookups = []
        event.listen(db.engine, "before_cursor_execute", lambda *a: lookups.append(1))
        assert items.existing([botox]) == {botox}
        for moment in range(1, KNOWN_ITEM_SECONDS, 10):  # in use all along
            now[0] = moment
            assert items.existing([botox]) == {botox}
        assert len(lookups) == 1
        now[0] = KNOWN_ITEM_SECONDS + 1
        assert items.existing([botox]) == {botox}
        assert len(lookups) == 2
