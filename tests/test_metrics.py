"""/metrics: who may read it, and what it counts: requests per endpoint, events
accepted and rejected by reason, ranking time and fallbacks, the outbox backlog,
Personalize failures; the DEBUG ranking log; multiprocess mode under gunicorn.

Prometheus registries are process-wide and every test app adds to them, so each
test compares a value before and after what it does, never an absolute count.
"""

import json
import logging
import os
import time
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from amplitude import SKIP_CODES, read_events, unpack_payload
from app import create_app
from fake_personalize import FakePersonalize
from helpers import Browser, app_config, catalog_id, fetch, seeded_site
from models import PersonalizeOutbox, Procedure, db
from personalization.events import (
    REJECTION_REASONS,
    EventError,
    Interaction,
    ItemKey,
    parse_event,
)

TOKEN = "scrape-token-for-tests"
REMOTE = {"REMOTE_ADDR": "203.0.113.50"}
TRACK = "web.track_interaction"


def value(name: str, **labels) -> float:
    """A sample of this process's registry (0 while the series does not exist)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text: str, name: str, **labels) -> float | None:
    """A sample of a /metrics answer, or None when the answer lacks it."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return sample.value
    return None


def scrape(app) -> str:
    """/metrics as a scraper on this machine reads it."""
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    return response.get_data(as_text=True)


# Who may read it


def test_a_remote_client_without_a_token_gets_a_plain_404(client):
    response = client.get("/metrics", environ_base=REMOTE)
    assert response.status_code == 404
    # The same answer as for any path that does not exist: nothing advertised.
    unknown = client.get("/metrics-nothing-here", environ_base=REMOTE)
    assert response.get_json() == unknown.get_json()
    assert "error" in response.get_json()
    assert "antidote_" not in response.get_data(as_text=True)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1"])
def test_a_loopback_client_may_read_it(app, address):
    response = app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": address})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == (
        "text/plain; version=0.0.4; charset=utf-8"
    )
    assert "# TYPE antidote_http_request_duration_seconds histogram" in (
        response.get_data(as_text=True)
    )


def test_the_right_token_opens_it_to_any_address(app):
    app.config["METRICS_TOKEN"] = TOKEN
    client = app.test_client()
    for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}"):
        response = client.get(
            "/metrics", environ_base=REMOTE, headers={"Authorization": header}
        )
        assert response.status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer "],
)
def test_a_wrong_token_gets_404(app, authorization):
    app.config["METRICS_TOKEN"] = TOKEN
    response = app.test_client().get(
        "/metrics", environ_base=REMOTE, headers={"Authorization": authorization}
    )
    assert response.status_code == 404


def test_without_a_configured_token_no_token_opens_it(client):
    response = client.get(
        "/metrics", environ_base=REMOTE, headers={"Authorization": "Bearer "}
    )
    assert response.status_code == 404


def sign_in_as(client, admin_id, since: float) -> None:
    with client.session_transaction() as session:
        session["admin_id"] = admin_id
        session["admin_since"] = since


def test_a_signed_in_admin_may_read_it(app, client):
    from werkzeug.security import generate_password_hash

    from models import AdminUser, db

    with app.app_context():
        admin = AdminUser(username="ops", password_hash=generate_password_hash("x"))
        db.session.add(admin)
        db.session.commit()
        admin_id = admin.id
    sign_in_as(client, admin_id, time.time())
    assert client.get("/metrics", environ_base=REMOTE).status_code == 200
    # An expired login, or one whose admin was deleted, opens nothing.
    sign_in_as(client, admin_id, time.time() - 13 * 3600)
    assert client.get("/metrics", environ_base=REMOTE).status_code == 404
    sign_in_as(client, admin_id + 1, time.time())
    assert client.get("/metrics", environ_base=REMOTE).status_code == 404


def test_a_request_relayed_by_an_untrusted_local_proxy_is_not_local(client):
    """Without TRUSTED_PROXY_COUNT every visitor behind a proxy on this machine
    arrives from 127.0.0.1; the proxy's header gives them away."""
    response = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 404


def test_behind_a_trusted_proxy_the_client_address_decides(database_url):
    app = create_app(app_config(database_url, TRUSTED_PROXY_COUNT=1))
    client = app.test_client()
    remote = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    local = client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
    assert (remote.status_code, local.status_code) == (404, 200)


# What it counts


def test_requests_are_timed_per_endpoint_never_per_path(catalog, client):
    before = value(
        "antidote_http_request_duration_seconds_count",
        endpoint="web.procedure",
        method="GET",
    )
    client.get("/procedures/botox")
    client.get("/procedures/no-such-procedure-xyz")
    client.get("/no/such/page/abc123")
    client.open("/", method="BREW")
    text = scrape(catalog)
    assert (
        scraped(
            text,
            "antidote_http_request_duration_seconds_count",
            endpoint="web.procedure",
            method="GET",
        )
        == before + 2
    )
    assert (
        scraped(
            text,
            "antidote_http_requests_total",
            endpoint="web.procedure",
            method="GET",
            status="404",
        )
        >= 1
    )
    assert scraped(text, "antidote_http_requests_total", endpoint="unmatched") >= 1
    assert scraped(text, "antidote_http_requests_total", method="other") >= 1
    for raw in ("no-such-procedure-xyz", "abc123", "BREW"):
        assert raw not in text


def test_a_page_view_and_a_tracked_batch_show_in_the_metrics(catalog):
    visitor = Browser(catalog)
    visitor.csrf_token()  # its page view comes before the counts are read
    botox = catalog_id(catalog, Procedure, "botox")
    before = {
        "home": value(
            "antidote_http_request_duration_seconds_count",
            endpoint="web.home",
            method="GET",
        ),
        "track": value(
            "antidote_http_request_duration_seconds_count",
            endpoint=TRACK,
            method="POST",
        ),
        "accepted": value("antidote_events_accepted_total", source="tracker"),
        "unknown_type": value(
            "antidote_events_rejected_total", source="tracker", reason="unknown_type"
        ),
        "unknown_item": value(
            "antidote_events_rejected_total", source="tracker", reason="unknown_item"
        ),
    }
    assert visitor.get("/").status_code == 200
    response = visitor.track(
        {"interaction_type": "click", "target_type": "procedure", "target_id": botox},
        {"interaction_type": "teleport", "target_type": "page", "target_id": None},
    )
    assert response.status_code == 202
    assert response.get_json()["accepted"] == 1
    text = scrape(catalog)

    def now(name, **labels):
        return scraped(text, name, **labels)

    assert (
        now(
            "antidote_http_request_duration_seconds_count",
            endpoint="web.home",
            method="GET",
        )
        == before["home"] + 1
    )
    assert (
        now("antidote_http_request_duration_seconds_count", endpoint=TRACK)
        == before["track"] + 1
    )
    assert now("antidote_events_accepted_total", source="tracker") == (
        before["accepted"] + 1
    )
    assert now(
        "antidote_events_rejected_total", source="tracker", reason="unknown_type"
    ) == (before["unknown_type"] + 1)
    # The other reason did not move.
    assert (
        now("antidote_events_rejected_total", source="tracker", reason="unknown_item")
        or 0.0
    ) == before["unknown_item"]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ("not an object", "malformed"),
        ({"interaction_type": "view", "colour": "red"}, "malformed"),
        ({"interaction_type": "teleport", "target_type": "page"}, "unknown_type"),
        ({"interaction_type": "click", "target_type": "clinic"}, "bad_target"),
        (
            {"interaction_type": "click", "target_type": "procedure", "target_id": "x"},
            "bad_target",
        ),
        (
            {"interaction_type": "view", "target_type": "page", "metadata": 3},
            "bad_metadata",
        ),
        ({"interaction_type": "search", "target_type": "page"}, "bad_metadata"),
        (
            {
                "interaction_type": "click",
                "target_type": "procedure",
                "target_id": 9**9,
            },
            "unknown_item",
        ),
    ],
)
def test_each_tracker_rejection_is_counted_under_its_reason(catalog, event, reason):
    visitor = Browser(catalog)
    visitor.csrf_token()
    before = value("antidote_events_rejected_total", source="tracker", reason=reason)
    response = visitor.post(
        "/personalization/track-interaction", json={"events": [event]}
    )
    assert response.status_code == 400
    after = value("antidote_events_rejected_total", source="tracker", reason=reason)
    assert after == before + 1


def test_rejection_reasons_are_a_short_fixed_list():
    reasons = set()
    for raw in (
        None,
        [],
        {"x": 1},
        {"interaction_type": "x"},
        {"interaction_type": "view", "target_type": "doctor", "target_id": -1},
        {"interaction_type": "view", "target_type": "page", "metadata": "m"},
        {"interaction_type": "engaged", "target_type": "page"},
    ):
        with pytest.raises(EventError) as refused:
            parse_event(raw)
        reasons.add(refused.value.reason)
    assert reasons == set(REJECTION_REASONS)


AMPLITUDE_SECRET = "metrics-test-secret"


def now_ms() -> int:
    return int(time.time() * 1000)


def amplitude_click(item="procedure:botox", **fields) -> dict:
    event = {
        "event_type": "click",
        "user_id": "amp-user-1",
        "time": now_ms(),
        "event_properties": {"item_id": item},
    }
    event.update(fields)
    return event


def test_webhook_events_are_counted_by_reason(database_url, catalog):
    app = create_app(
        app_config(database_url, AMPLITUDE_WEBHOOK_SECRET=AMPLITUDE_SECRET)
    )
    reasons = ("unknown_item", "duplicate", "unknown_type", "no_visitor")

    def counts():
        return [value("antidote_events_accepted_total", source="amplitude")] + [
            value("antidote_events_rejected_total", source="amplitude", reason=r)
            for r in reasons
        ]

    before = counts()
    repeated = amplitude_click(uuid="6e9bd9b4-0000-4000-8000-000000000001")
    body = [
        repeated,
        repeated,  # a repeat within the batch
        amplitude_click(item="procedure:999999"),
        {"event_type": "purchase", "user_id": "u"},
        amplitude_click(user_id=None),
    ]
    response = app.test_client().post(
        "/webhooks/amplitude/",
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {AMPLITUDE_SECRET}"},
    )
    assert response.status_code == 200
    assert response.get_json()["processed"] == 1
    assert [a - b for a, b in zip(counts(), before, strict=True)] == [1, 1, 1, 1, 1]


@pytest.mark.parametrize(
    "event",
    [
        "not an object",
        {"user_id": "u"},
        {"event_type": "session_start", "user_id": "u"},
        {"event_type": "[Amplitude] Page Viewed"},
        {"event_type": "purchase", "user_id": "u"},
        {"event_type": "click", "user_id": "u"},
        amplitude_click(user_id=None),
        amplitude_click(time=1),
        amplitude_click(time=now_ms() + 3 * 86400 * 1000),
    ],
)
def test_every_amplitude_skip_reason_has_a_code(event):
    """amplitude.py says why in prose, and in one of a few words for metrics."""
    _, skipped = read_events([event], {"click", "view"}, datetime.now(UTC), 90)
    assert skipped[0]["code"] in SKIP_CODES


def test_a_cohort_webhook_is_counted_as_one():
    cohort = {"cohort_id": "c1", "users": ["u1", "u2"]}
    _, reason = unpack_payload(cohort)
    _, skipped = read_events([cohort], {"click"}, datetime.now(UTC), 90, reason)
    assert skipped[0]["code"] == "cohort"


# Rankings


def engine_of(app):
    return app.extensions["personalization"]


def test_rankings_are_timed_and_their_fallbacks_counted(catalog):
    served = engine_of(catalog).recommenders.served.name
    labels = {"algorithm": served, "operation": "recommend", "kind": "procedure"}
    fallbacks = {"algorithm": served, "kind": "procedure"}
    before = {
        "timed": value("antidote_ranking_duration_seconds_count", **labels),
        "cold": value(
            "antidote_ranking_fallbacks_total", reason="cold_start", **fallbacks
        ),
        "fill": value(
            "antidote_ranking_fallbacks_total", reason="popular_fill", **fallbacks
        ),
        "engine": value("antidote_rankings_total", source="engine", **labels),
    }
    assert Browser(catalog).get("/").status_code == 200  # a first visit: popular
    with catalog.app_context():
        engine = engine_of(catalog)
        visitor = "m" * 32
        engine.record_interactions(
            visitor,
            "s",
            [
                Interaction(
                    "click",
                    ItemKey("procedure", catalog_id(catalog, Procedure, "botox")),
                )
            ],
        )
        # More than the visitor's interests can fill: popular items fill the end.
        ranking = engine.recommend("procedure", visitor, 40)
        assert len(ranking) > 0
    assert value("antidote_ranking_duration_seconds_count", **labels) >= (
        before["timed"] + 2
    )
    assert value(
        "antidote_ranking_fallbacks_total", reason="cold_start", **fallbacks
    ) == (before["cold"] + 1)
    assert value(
        "antidote_ranking_fallbacks_total", reason="popular_fill", **fallbacks
    ) == (before["fill"] + 1)
    assert value("antidote_rankings_total", source="engine", **labels) == (
        before["engine"] + 1
    )


def test_a_nested_ranking_is_part_of_the_one_that_called_it(catalog):
    """The blend's popular fill is the blend's ranking, not a second one."""
    popular = {"algorithm": "popular", "operation": "recommend", "kind": "doctor"}
    before = value("antidote_ranking_duration_seconds_count", **popular)
    with catalog.app_context():
        engine_of(catalog).recommend("doctor", None, 5)  # the blend, filled
    assert value("antidote_ranking_duration_seconds_count", **popular) == before
    with catalog.app_context():
        engine_of(catalog).recommend("doctor", None, 5, algorithm="popular")
    assert value("antidote_ranking_duration_seconds_count", **popular) == before + 1


def test_each_ranking_decision_is_logged_at_debug_without_the_visitor_id(
    catalog, caplog
):
    visitor = "d" * 8 + "e" * 24
    with caplog.at_level(logging.DEBUG, logger="personalization.telemetry"):
        with catalog.app_context():
            engine_of(catalog).recommend("category", visitor, 3)
    [record] = [r for r in caplog.records if r.name == "personalization.telemetry"]
    assert record.levelno == logging.DEBUG
    message = record.getMessage()
    assert message.startswith("ranked recommend category for visitor dddddddd ")
    assert "source=fallback fallback=cold_start in " in message
    assert visitor not in message


def test_the_ranking_log_is_turned_on_by_its_setting(database_url):
    logger = logging.getLogger("personalization.telemetry")
    level = logger.level
    try:
        logger.setLevel(logging.NOTSET)
        create_app(app_config(database_url))
        assert logger.level == logging.NOTSET
        create_app(app_config(database_url, RANKING_DEBUG_LOG=True))
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(level)


def test_personalize_failures_are_counted_as_fallbacks_by_reason(
    database_url, catalog, fake_credentials
):
    fake = FakePersonalize().start()
    fake.mode = "error"
    try:
        app = create_app(
            app_config(
                database_url,
                AWS_PERSONALIZE_ENABLED=True,
                AWS_PERSONALIZE_CAMPAIGN_ARN="arn:aws:personalize:us-east-1:1:campaign/r",
                AWS_PERSONALIZE_SYNC_INTERVAL=0,
                AWS_PERSONALIZE_ENDPOINT_URL=fake.url,
                AWS_PERSONALIZE_FAILURE_THRESHOLD=2,
                AWS_PERSONALIZE_COOLDOWN_SECONDS=60,
            )
        )
        visitor = Browser(app)
        pid = catalog_id(app, Procedure, "botox")
        visitor.track(
            {"interaction_type": "click", "target_type": "procedure", "target_id": pid}
        )
        labels = {"algorithm": "personalize", "kind": "procedure"}

        def fallbacks(reason):
            return value("antidote_ranking_fallbacks_total", reason=reason, **labels)

        before = {
            r: fallbacks(r) for r in ("personalize_error", "personalize_circuit_open")
        }
        for _ in range(3):  # two failures open the circuit; the third is refused
            response = visitor.get("/personalization/recommendations/procedures")
            assert response.status_code == 200
        assert fallbacks("personalize_error") == before["personalize_error"] + 2
        assert fallbacks("personalize_circuit_open") == (
            before["personalize_circuit_open"] + 1
        )
        # Without a SIMS campaign, similar items never ask Personalize: not a
        # failure, whatever the call before it in this thread met.
        with app.app_context():
            engine_of(app).similar(ItemKey("procedure", pid), 3)
        assert fallbacks("personalize_circuit_open") == (
            before["personalize_circuit_open"] + 1
        )
        text = scrape(app)
        assert (
            scraped(text, "antidote_personalize_circuit_open", circuit="ranking") == 1
        )
        assert (
            scraped(
                text,
                "antidote_personalize_calls_total",
                operation="GetPersonalizedRanking",
                outcome="circuit_open",
            )
            >= 1
        )
    finally:
        fake.stop()


# The outbox


def test_the_outbox_backlog_is_read_at_scrape_time(app):
    text = scrape(app)
    assert scraped(text, "antidote_outbox_pending_events") == 0
    assert scraped(text, "antidote_outbox_dead_letters") == 0
    with app.app_context():
        now = datetime.now(UTC)
        rows = [
            {"attempts": 0, "sent_at": None},
            {"attempts": 3, "sent_at": None},
            {"attempts": 10, "sent_at": None},  # refused too often: a dead letter
            {"attempts": 0, "sent_at": now},
        ]
        for row in rows:
            db.session.add(
                PersonalizeOutbox(
                    user_id="o" * 32,
                    session_id="s",
                    event_type="click",
                    item_id="procedure:1",
                    event_value=1.0,
                    occurred_at=now,
                    **row,
                )
            )
        db.session.commit()
    text = scrape(app)
    assert scraped(text, "antidote_outbox_pending_events") == 2
    assert scraped(text, "antidote_outbox_dead_letters") == 1


# Several workers


def test_gunicorn_workers_are_added_up(tmp_path):
    """Under gunicorn each worker counts apart; /metrics shows their sum, and a
    previous run's files are cleared at start."""
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "counter_999999.db").write_bytes(b"left by an earlier run")
    with seeded_site(
        f"sqlite:///{tmp_path}/metrics.db",
        workers=2,
        PROMETHEUS_MULTIPROC_DIR=str(folder),
    ) as site:
        assert not (folder / "counter_999999.db").exists()
        for _ in range(12):
            assert fetch(site.url + "/healthz")[0] == 200
        status, text = fetch(site.url + "/metrics")
        assert list(folder.glob("counter_*.db"))  # the workers' counts
    assert status == 200
    healthz = scraped(
        text,
        "antidote_http_requests_total",
        endpoint="web.healthz",
        method="GET",
        status="200",
    )
    assert healthz >= 12  # (plus the start-up check)
    assert "antidote_outbox_pending_events 0.0" in text
    assert os.path.isdir(folder)  # a folder the operator chose stays
