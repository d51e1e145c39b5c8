"""The Amplitude webhook: real payloads, authentication, limits, time formats,
visitors, items, weights, impressions, de-duplication, nothing lost."""

import copy
import json
import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from app import create_app
from helpers import (
    Browser,
    app_config,
    catalog_id,
    shared_data,
    stored_interactions,
)
from models import (
    Category,
    PersonalizeOutbox,
    Procedure,
    UserCategoryAffinity,
    UserInteraction,
    WebhookEventKey,
    db,
    utcnow,
)

URL = "/webhooks/amplitude/"
SECRET = "current-secret"
AUTH = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture
def hook(database_url, catalog):
    """The app with the webhook configured, and a way to post to it."""
    app = create_app(
        app_config(
            database_url,
            AMPLITUDE_WEBHOOK_SECRET=SECRET,
            AMPLITUDE_WEBHOOK_SECRET_PREVIOUS="previous-secret",
        )
    )
    client = app.test_client()

    def post(body, headers=AUTH, raw=False):
        data = body if raw else json.dumps(body)
        return client.post(
            URL, data=data, headers=headers, content_type="application/json"
        )

    post.app = app
    return post


def payload(number: int):
    return json.loads(
        shared_data("amplitude", f"payload_{number:02d}.json").read_text()
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def click(item="procedure:botox", **fields):
    event = {
        "event_type": "click",
        "user_id": "amp-user-1",
        "time": now_ms(),
        "event_properties": {"item_id": item},
    }
    event.update(fields)
    return event


def counts(response):
    body = response.get_json()
    return body["processed"], body["skipped"], body["duplicates"]


# Every real payload


REAL_PAYLOADS = {
    1: (1, "unknown event type"),
    2: (1, "unknown event type"),
    3: (1, "unknown event type 'click event'"),
    4: (1, "cohort webhook"),
    5: (1, "cohort webhook"),
    6: (1, "unknown event type 'watch_tutorial'"),
    7: (1, "unknown event type"),
    8: (1, "unknown event type"),
    9: (1, "unknown event type 'Order Completed'"),
    10: (1, "'$identify' is not an interaction"),
    11: (1, "unknown event type"),
    12: (1, "unknown event type"),
    13: (3, "unknown event type"),
    14: (1, "'[Amplitude] PROXYPROXYPROXY' is not an interaction"),
    15: (1, "unknown event type 'besøk'"),
}


@pytest.mark.parametrize("number", sorted(REAL_PAYLOADS))
def test_every_real_payload_is_skipped_with_a_reason(hook, number):
    skipped, reason = REAL_PAYLOADS[number]
    response = hook(payload(number))
    assert response.status_code == 200
    body = response.get_json()
    assert body["message"] == "Webhook successfully processed"
    assert counts(response) == (0, skipped, 0)
    assert all(reason in error["reason"] for error in body["errors"])
    assert stored_interactions(hook.app) == []


def as_site_events(number: int) -> tuple[dict | list, int]:
    """A real payload with its events turned into clicks on a catalog item, at
    a recent time written the way that shape writes time."""
    body = copy.deepcopy(payload(number))
    events = body if isinstance(body, list) else body.get("events", [body])
    recent = datetime.now(UTC) - timedelta(minutes=5)
    for event in events:
        if "name" in event:  # the custom template
            event["name"] = "click"
            event["properties"] = {"item_id": "procedure:botox"}
            event["time"] = recent.isoformat()
            continue
        event["event_type"] = "Click"
        event.setdefault("event_properties", {})
        event["event_properties"] = {
            **(event["event_properties"] or {}),
            "item_id": "procedure:botox",
        }
        if "event_time" in event:
            event["event_time"] = recent.strftime("%Y-%m-%d %H:%M:%S.%f")
            event.pop("time", None)
        elif "timestamp" in event:
            event["timestamp"] = int(recent.timestamp() * 1000)
        else:
            event["time"] = int(recent.timestamp() * 1000)
    return body, len(events)


@pytest.mark.parametrize("number", [1, 2, 3, 6, 7, 8, 9, 11, 12, 13, 14, 15])
def test_every_real_payload_shape_is_accepted(hook, number):
    body, events = as_site_events(number)
    response = hook(body)
    assert response.status_code == 200, response.get_json()
    assert counts(response) == (events, 0, 0), response.get_json()
    rows = stored_interactions(hook.app)
    assert len(rows) == events
    with hook.app.app_context():
        stamps = db.session.scalars(select(UserInteraction.timestamp)).all()
    for stamp in stamps:
        stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
        assert abs(utcnow() - timedelta(minutes=5) - stamp) < timedelta(seconds=60)


# Authentication


def test_unconfigured_webhook_fails_closed(database_url, catalog):
    app = create_app(app_config(database_url, AMPLITUDE_WEBHOOK_SECRET=""))
    response = app.test_client().post(URL, json=click(), headers=AUTH)
    assert response.status_code == 503
    assert response.get_json() == {"error": "webhook not configured"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {SECRET}"},
        {"Authorization": "Bearer "},
        {"X-Webhook-Token": "wrong"},
        {"X-Webhook-Token": SECRET[:-1]},
    ],
)
def test_missing_or_wrong_tokens_get_401(hook, headers):
    response = hook([click()], headers=headers)
    assert response.status_code == 401
    assert "error" in response.get_json()
    assert stored_interactions(hook.app) == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {SECRET}"},
        {"Authorization": f"bearer {SECRET}"},
        {"X-Webhook-Token": SECRET},
        {"Authorization": "Bearer previous-secret"},  # during a rotation
        {"X-Webhook-Token": "previous-secret"},
    ],
)
def test_current_and_previous_secrets_are_accepted(hook, headers):
    assert hook([click()], headers=headers).status_code == 200


def test_no_csrf_token_is_needed(hook):
    # The app under test has CSRF on; the webhook blueprint alone is exempt.
    assert hook.app.config.get("WTF_CSRF_ENABLED", True)
    assert counts(hook([click()])) == (1, 0, 0)


# Limits and bad bodies


def test_bodies_over_1_mb_get_413(hook):
    big = [click(padding="x" * 1000) for _ in range(1100)]
    response = hook(big)
    assert response.status_code == 413
    assert stored_interactions(hook.app) == []


def test_more_than_2000_events_get_413(hook):
    response = hook([{"event_type": "x"}] * 2001)
    assert response.status_code == 413
    assert "at most 2000" in response.get_json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "body is not JSON"),
        ('"a string"', "body must be a JSON object or array"),
        ("42", "body must be a JSON object or array"),
        ('{"events": "nope"}', '"events" must be an array'),
        ("[" * 5000 + "]" * 5000, "body is not JSON"),
    ],
)
def test_bad_bodies_get_400_with_a_message(hook, body, message):
    response = hook(body, raw=True)
    assert response.status_code == 400
    assert message in response.get_json()["error"]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ("not an object", "not a JSON object"),
        ({"user_id": "u"}, "no event_type"),
        ({"event_type": "session_start", "user_id": "u"}, "not an interaction"),
        ({"event_type": "[Amplitude] Page Viewed"}, "not an interaction"),
        ({"event_type": "purchase", "user_id": "u"}, "unknown event type 'purchase'"),
        ({"event_type": "click", "user_id": "u"}, "names no catalog item"),
        (click(user_id=None), "no visitor_id, user_id or device_id"),
        (click(item="procedure:999999"), "no catalog item 'procedure:999999'"),
        (click(item="clinic:1"), "no catalog item 'clinic:1'"),
        (click(item="no-such-slug"), "no catalog item 'no-such-slug'"),
        # Digits int() refuses: "²" and Arabic-Indic 3 were a 500.
        (click(item="procedure:\u00b2"), "no catalog item 'procedure:\u00b2'"),
        (click(item="\u0663"), "no catalog item '\u0663'"),
        (click(time=1), "older than the 90-day retention"),
        (click(time=now_ms() + 3 * 86400 * 1000), "more than a day in the future"),
    ],
)
def test_irrelevant_events_are_skipped_with_a_reason(hook, event, reason):
    response = hook([click(), event])
    assert response.status_code == 200
    body = response.get_json()
    assert counts(response) == (1, 1, 0)
    assert body["errors"][0]["index"] == 1
    assert reason in body["errors"][0]["reason"]


# Items, time formats, visitors


@pytest.mark.parametrize(
    "properties",
    [
        {"item_id": "procedure:botox"},
        {"item_id": "botox"},
        {"item_type": "procedure", "item_id": "botox"},
        {"item_type": "Procedure", "item_id": "{botox_id}"},
        {"item_type": "procedure", "item_id": "{botox_id}"},
        {"item_id": "procedure:{botox_id}"},
    ],
)
def test_item_references_in_every_accepted_form(hook, properties):
    botox = catalog_id(hook.app, Procedure, "botox")
    properties = {
        k: v.format(botox_id=botox) if isinstance(v, str) else v
        for k, v in properties.items()
    }
    event = click()
    event["event_properties"] = properties
    assert counts(hook([event])) == (1, 0, 0)
    assert stored_interactions(hook.app)[0][2:] == ("procedure", botox)


def expected_times():
    moment = (utcnow() - timedelta(hours=2)).replace(microsecond=123000)
    epoch = moment.timestamp()
    return moment, [
        {"time": int(epoch * 1000)},
        {"time": int(epoch)},  # seconds, below 1e11
        {"event_time": moment.strftime("%Y-%m-%d %H:%M:%S.%f")},
        {"client_event_time": moment.strftime("%Y-%m-%d %H:%M:%S.%f")},
        {"time": moment.isoformat()},
        {"time": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
        {"timestamp": int(epoch * 1000)},
    ]


@pytest.mark.parametrize("case", range(7))
def test_event_time_formats(hook, case):
    moment, variants = expected_times()
    event = click()
    event.pop("time")
    event.update(variants[case])
    assert counts(hook([event])) == (1, 0, 0)
    with hook.app.app_context():
        stamp = db.session.scalar(select(UserInteraction.timestamp))
    stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    assert abs(stamp - moment) < timedelta(seconds=1)


def test_without_any_time_the_receive_time_is_used(hook):
    event = click()
    event.pop("time")
    hook([event])
    with hook.app.app_context():
        stamp = db.session.scalar(select(UserInteraction.timestamp))
    stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    assert abs(utcnow() - stamp) < timedelta(seconds=30)


def test_raw_amplitude_ids_are_never_stored(hook):
    hook([click(user_id="person@example.com"), click(user_id=None, device_id="dev-9")])
    users = {row.user_id for row in stored_interactions(hook.app)}
    assert len(users) == 2
    assert all(len(u) == 32 and "@" not in u and "dev" not in u for u in users)
    # The same Amplitude user maps to the same visitor every time.
    hook([click(user_id="person@example.com", item="procedure:dysport")])
    assert len({row.user_id for row in stored_interactions(hook.app)}) == 2


ALIAS_META = re.compile(r'name="antidote-visitor-id" content="([^"]+)"')


def test_the_alias_a_page_hands_amplitude_links_its_events_to_the_browser(hook):
    browser = Browser(hook.app)
    alias = ALIAS_META.search(browser.get("/").get_data(as_text=True)).group(1)
    visitor_id = stored_interactions(hook.app)[0].user_id
    assert alias != visitor_id and alias.startswith(visitor_id + "-")
    signed = click(user_id="amp-1")
    signed["event_properties"]["visitor_id"] = alias
    # Anyone who learns or guesses a visitor id cannot send events as them: only
    # aliases the site signed name a visitor.
    bare = click(user_id="amp-2", item="procedure:dysport")
    bare["event_properties"]["visitor_id"] = visitor_id
    forged = click(user_id="amp-3", item="procedure:xeomin")
    forged["event_properties"]["visitor_id"] = f"{visitor_id}-{'0' * 32}"
    assert counts(hook([signed, bare, forged])) == (3, 0, 0)
    rows = stored_interactions(hook.app)
    assert rows[1].user_id == visitor_id
    assert visitor_id not in {rows[2].user_id, rows[3].user_id}
    # The site now ranks with what Amplitude saw.
    body = browser.get("/personalization/recommendations/categories").get_json()
    assert body["items"][0]["slug"] == "injectables"


def test_pages_expose_the_alias_for_the_amplitude_sdk_only_when_tracked(hook):
    html = Browser(hook.app).get("/").get_data(as_text=True)
    assert ALIAS_META.search(html)
    private = Browser(hook.app, headers={"Sec-GPC": "1"}).get("/")
    assert "antidote-visitor-id" not in private.get_data(as_text=True)


# Weights and impressions


def affinity(app, category_slug) -> float:
    category = catalog_id(app, Category, category_slug)
    with app.app_context():
        return db.session.scalar(
            select(func.max(UserCategoryAffinity.affinity_score)).where(
                UserCategoryAffinity.category_id == category
            )
        )


def test_weights_follow_the_table(hook):
    hook([click(event_type="bookmark")])
    assert affinity(hook.app, "injectables") == pytest.approx(0.54)
    hook([click(event_type="flag_content", item="procedure:dysport")])
    assert affinity(hook.app, "injectables") == pytest.approx(0.0, abs=1e-6)


def test_negative_events_demote_the_item_for_that_visitor(hook):
    browser = Browser(hook.app)
    page = browser.get("/procedures/botox").get_data(as_text=True)
    for slug in ("dysport", "xeomin", "kybella"):
        hook([click(item=f"procedure:{slug}")])  # another visitor's interest
    # Botox leads them to its category's procedures; they hide one of those.
    hidden = click(event_type="not_interested", item="procedure:dysport")
    hidden["event_properties"]["visitor_id"] = ALIAS_META.search(page).group(1)
    api = "/personalization/recommendations/procedures?limit=50"
    before = [item["slug"] for item in browser.get(api).get_json()["items"]]
    assert "dysport" in before[:6]
    assert counts(hook([hidden])) == (1, 0, 0)
    after = [item["slug"] for item in browser.get(api).get_json()["items"]]
    # Demoted behind the other 59 procedures: not among the first 50.
    assert "dysport" not in after and len(after) == 50


def test_impressions_are_stored_and_forwarded_as_one_event(database_url, catalog):
    app = create_app(
        app_config(
            database_url,
            AMPLITUDE_WEBHOOK_SECRET=SECRET,
            AWS_PERSONALIZE_ENABLED=True,
            AWS_PERSONALIZE_CAMPAIGN_ARN="arn:aws:personalize:us-east-1:1:campaign/x",
            AWS_PERSONALIZE_TRACKING_ID="t",
            AWS_PERSONALIZE_SYNC_INTERVAL=0,
        )
    )
    skin = catalog_id(app, Category, "skin-resurfacing")
    shown = [
        "procedure:botox",
        "procedure:dysport",
        "doctor:999999",
        f"category:{skin}",
    ]
    event = {
        "event_type": "initial_impression",
        "device_id": "d-1",
        "time": now_ms(),
        "event_properties": {"items_shown": shown},
    }
    response = app.test_client().post(URL, json=[event], headers=AUTH)
    assert counts(response) == (1, 0, 0)
    rows = stored_interactions(app)
    assert [r.interaction_type for r in rows] == ["initial_impression"] * 3
    with app.app_context():
        outbox = db.session.scalars(select(PersonalizeOutbox)).all()
    assert len(outbox) == 1
    assert json.loads(outbox[0].impression)[0].startswith("procedure:")
    assert len(json.loads(outbox[0].impression)) == 3


def test_one_event_cannot_flood_the_log_with_items(hook):
    """74,000 items in one impression once stored 74,000 rows and skewed
    popularity: repeats count once, 50 items at most, and the answer says so."""
    with hook.app.app_context():
        ids = list(db.session.scalars(select(Procedure.id).order_by(Procedure.id)))
    # 40,000 references: within the 1 MB body limit whatever the ids' length.
    shown = ([f"procedure:{pid}" for pid in ids] * 1000)[:40_000]
    event = click(event_type="initial_impression", uuid="flood")
    event["event_properties"] = {"items_shown": shown}
    repeats = click(event_type="scroll_impression", uuid="repeats")
    repeats["event_properties"] = {"items_shown": ["procedure:botox"] * 3}
    response = hook([event, repeats, click(uuid="plain")])
    assert response.status_code == 200
    body = response.get_json()
    assert counts(response) == (3, 0, 0)
    assert body["trimmed"] == [
        {"index": 0, "listed": len(shown), "kept": 50},
        {"index": 1, "listed": 3, "kept": 1},
    ]
    assert len(stored_interactions(hook.app)) == 50 + 1 + 1


# De-duplication and nothing lost


@pytest.mark.parametrize(
    "identity",
    [
        {"uuid": "d0b5b3a6-2e3b-11eb-9a80-0a62134d514d"},
        {"insert_id": "insert-1", "device_id": "dev"},
        {"$insert_id": "ajs-abc:def", "device_id": "dev"},
        {},  # falls back to a hash of what happened
    ],
)
def test_retried_deliveries_count_as_duplicates(hook, identity):
    event = click(**identity, time=now_ms() - 1000)
    assert counts(hook([event])) == (1, 0, 0)
    before = stored_interactions(hook.app), affinity(hook.app, "injectables")
    assert counts(hook([event])) == (0, 0, 1)
    assert counts(hook([event, event])) == (0, 0, 2)
    assert (stored_interactions(hook.app), affinity(hook.app, "injectables")) == before


def test_a_batch_from_many_visitors_is_recorded(hook):
    """Regression: a batch naming over 500 visitors read their histories in one
    UNION, which SQLite refuses ("too many terms in compound SELECT"): the
    webhook answered 503 and Amplitude would retry it forever."""
    events = [click(user_id=f"amp-{i}", uuid=f"many-{i}") for i in range(600)]
    response = hook(events)
    assert response.status_code == 200, response.get_json()
    assert counts(response) == (600, 0, 0)
    assert len(stored_interactions(hook.app)) == 600


def test_repeats_within_one_batch_count_once(hook):
    event = click(uuid="same")
    assert counts(hook([event, event, click(uuid="other")])) == (2, 0, 1)


def test_a_database_outage_gives_503_and_loses_nothing(hook, monkeypatch):
    system = hook.app.extensions["personalization"]
    hook.app.config["PROPAGATE_EXCEPTIONS"] = False
    events = [click(uuid=f"e{i}") for i in range(5)]

    def fail(*args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(system.ingest, "record", fail)  # the log append
    response = hook(events)
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    with hook.app.app_context():
        assert db.session.scalar(select(func.count(WebhookEventKey.key_hash))) == 0
    assert stored_interactions(hook.app) == []
    monkeypatch.undo()
    assert counts(hook(events)) == (5, 0, 0)  # Amplitude's retry goes through


def test_unreachable_database_gives_503(database_url, backend, tmp_path):
    from sqlalchemy.engine import make_url

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/missing/db.sqlite"
    else:
        url = make_url(database_url).set(port=1).render_as_string(False)
    app = create_app(
        app_config(url, AMPLITUDE_WEBHOOK_SECRET=SECRET, PROPAGATE_EXCEPTIONS=False)
    )
    response = app.test_client().post(URL, json=[click()], headers=AUTH)
    assert response.status_code == 503
    assert response.get_json() == {"error": "service temporarily unavailable"}


def test_cleanup_prunes_keys_after_7_days(hook):
    hook([click(uuid="old"), click(uuid="new")])
    with hook.app.app_context():
        key = db.session.scalars(select(WebhookEventKey)).first()
        key.received_at = utcnow() - timedelta(days=8)
        db.session.commit()
    result = hook.app.test_cli_runner().invoke(args=["personalization", "cleanup"])
    assert "1 expired webhook keys" in result.output
    with hook.app.app_context():
        assert db.session.scalar(select(func.count(WebhookEventKey.key_hash))) == 1
