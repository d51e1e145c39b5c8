"""AWS Personalize: re-ranking, timeouts and the circuit breaker, the event outbox,
and the bulk export. botocore's Stubber checks each request against the real API
model; a fake HTTP server plays the failing service."""

import csv
import json
import time
from datetime import UTC, datetime

import boto3
import pytest
from botocore.stub import ANY, Stubber
from sqlalchemy import func, select

from fake_personalize import FakePersonalize
from helpers import (
    RANKING_CAMPAIGN,
    Browser,
    catalog_id,
    personalize_app,
)
from models import Category, PersonalizeOutbox, Procedure, db
from personalization.events import Interaction, ItemKey
from personalize_client import (
    MAX_IMPRESSION_IDS,
    CircuitBreaker,
    PageBudget,
    PersonalizeClient,
    personalize_event,
)

CAMPAIGN = RANKING_CAMPAIGN
SIMS = "arn:aws:personalize:us-east-1:123456789012:campaign/sims"
API = "/personalization/recommendations/"
# boto3 needs credentials of some kind; never a real profile.
pytestmark = pytest.mark.usefixtures("fake_credentials")


def client_of(app) -> PersonalizeClient:
    return app.extensions["personalize_client"]


def interested_visitor(app) -> Browser:
    """A visitor with a clear interest: three injectables clicked."""
    visitor = Browser(app)
    visitor.get("/")
    for slug in ("botox", "dysport", "xeomin"):
        pid = catalog_id(app, Procedure, slug)
        visitor.track(
            {"interaction_type": "click", "target_type": "procedure", "target_id": pid}
        )
    return visitor


# Re-ranking, checked against the real API model


def test_reranking_orders_the_local_candidates(database_url, catalog):
    app = personalize_app(database_url)
    visitor = interested_visitor(app)
    local = visitor.get(API + "procedures?limit=6").get_json()
    runtime = client_of(app).runtime
    with Stubber(runtime) as stub:
        stub.add_response(
            "get_personalized_ranking",
            {
                "personalizedRanking": [
                    {"itemId": f"procedure:{item['id']}", "score": 0.5}
                    for item in reversed(local["items"])
                ]
            },
            {"campaignArn": CAMPAIGN, "userId": ANY, "inputList": ANY},
        )
        reranked = client_of(app).rerank(
            "a" * 32, [f"procedure:{item['id']}" for item in local["items"]]
        )
        stub.assert_no_pending_responses()
    assert [r[0] for r in reranked] == [
        f"procedure:{item['id']}" for item in reversed(local["items"])
    ]


def test_pages_and_api_say_when_personalize_ranked(database_url, catalog):
    fake = FakePersonalize().start()
    try:
        app = personalize_app(database_url, AWS_PERSONALIZE_ENDPOINT_URL=fake.url)
        visitor = interested_visitor(app)
        body = visitor.get(API + "procedures").get_json()
        assert body["source"] == "personalize"
        sent = fake.calls("/personalize-ranking")[-1]
        assert all(re.startswith("procedure:") for re in sent["inputList"])
        assert 6 < len(sent["inputList"]) <= 500
        # The fake reverses its input: the last candidate comes first.
        assert body["items"][0]["id"] == int(sent["inputList"][-1].split(":")[1])
        assert visitor.get("/").status_code == 200
    finally:
        fake.stop()


def test_visitors_without_history_cost_no_cloud_call(database_url, catalog):
    fake = FakePersonalize().start()
    try:
        app = personalize_app(database_url, AWS_PERSONALIZE_ENDPOINT_URL=fake.url)
        body = Browser(app).get(API + "procedures").get_json()
        assert body["source"] == "popular"
        assert fake.calls("/personalize-ranking") == []
    finally:
        fake.stop()


def test_similar_items_come_from_the_sims_campaign(database_url, catalog):
    fake = FakePersonalize().start()
    try:
        app = personalize_app(
            database_url,
            AWS_PERSONALIZE_ENDPOINT_URL=fake.url,
            AWS_PERSONALIZE_SIMS_CAMPAIGN_ARN=SIMS,
        )
        botox = catalog_id(app, Procedure, "botox")
        wanted = [
            catalog_id(app, Procedure, slug)
            for slug in ("rhinoplasty", "facelift", "thread-lift", "kybella")
        ]
        fake.similar = [f"procedure:{pid}" for pid in wanted] + [
            "doctor:3",
            f"procedure:{botox}",
        ]
        body = Browser(app).get(API + "procedures?item=botox&limit=4").get_json()
        assert body["source"] == "personalize"
        assert [item["id"] for item in body["items"]] == wanted
        assert fake.calls("/recommendations")[0]["itemId"] == f"procedure:{botox}"
    finally:
        fake.stop()


# Failures never break or slow a page


@pytest.mark.parametrize("mode", ["slow", "error", "throttle"])
@pytest.mark.serial
def test_failures_fall_back_to_the_local_order(database_url, catalog, mode):
    fake = FakePersonalize().start()
    fake.mode = mode
    try:
        app = personalize_app(
            database_url,
            AWS_PERSONALIZE_ENDPOINT_URL=fake.url,
            AWS_PERSONALIZE_READ_TIMEOUT=0.2,
        )
        visitor = interested_visitor(app)
        started = time.perf_counter()
        body = visitor.get(API + "procedures").get_json()
        elapsed = time.perf_counter() - started
        assert body["source"] in ("affinity", "mixed")
        assert len(body["items"]) == 6
        assert elapsed < 0.2 + 0.5  # one read timeout, no retry, plus the page
        assert visitor.get("/").status_code == 200
    finally:
        fake.stop()


@pytest.mark.serial
def test_a_page_waits_on_a_failing_personalize_once(database_url, catalog):
    """The home page asks for three rankings; after one times out, the other two
    keep the local order at once instead of waiting again."""
    fake = FakePersonalize().start()
    try:
        # A budget no healthy page nears, even on a loaded machine: what stops
        # the second and third calls here is the failure, not the budget.
        app = personalize_app(
            database_url,
            AWS_PERSONALIZE_ENDPOINT_URL=fake.url,
            AWS_PERSONALIZE_PAGE_BUDGET=5.0,
        )
        visitor = interested_visitor(app)
        fake.mode = "ok"
        visitor.get("/")
        assert len(fake.calls("/personalize-ranking")) == 3  # healthy: all three
        fake.mode, fake.delay = "slow", 1.0
        started = time.perf_counter()
        assert visitor.get("/").status_code == 200
        elapsed = time.perf_counter() - started
        assert len(fake.calls("/personalize-ranking")) == 3 + 1
        # The timeouts cut the wait (0.3 s at most) short of the fake's 1 s.
        assert elapsed < 1.0
    finally:
        fake.stop()


def test_page_budget_admits_a_call_only_if_its_worst_case_fits():
    budget = PageBudget(seconds=0.5, worst_call_seconds=0.3)
    assert budget.allows_a_call()  # outside a request: no budget
    budget.start_page()
    assert budget.allows_a_call()
    budget.spend(0.2)
    assert budget.allows_a_call()  # 0.2 + 0.3 fits in 0.5
    budget.spend(0.05)
    assert not budget.allows_a_call()
    budget.start_page()
    budget.exhaust()
    assert not budget.allows_a_call()
    budget.end_page()
    assert budget.allows_a_call()


def test_circuit_opens_after_repeated_failures_and_recovers(database_url, catalog):
    fake = FakePersonalize().start()
    fake.mode = "error"
    try:
        app = personalize_app(
            database_url,
            AWS_PERSONALIZE_ENDPOINT_URL=fake.url,
            AWS_PERSONALIZE_FAILURE_THRESHOLD=3,
            AWS_PERSONALIZE_COOLDOWN_SECONDS=0.5,
        )
        visitor = interested_visitor(app)
        for _ in range(3):
            visitor.get(API + "procedures")
        assert client_of(app).breaker.is_open
        calls = len(fake.calls("/personalize-ranking"))
        for _ in range(5):
            assert visitor.get(API + "procedures").get_json()["source"] != "personalize"
        assert len(fake.calls("/personalize-ranking")) == calls  # not called at all
        fake.mode = "ok"
        time.sleep(0.6)
        assert visitor.get(API + "procedures").get_json()["source"] == "personalize"
        assert not client_of(app).breaker.is_open
    finally:
        fake.stop()


def test_circuit_breaker_half_opens_for_one_trial():
    now = [0.0]
    breaker = CircuitBreaker(
        failure_threshold=2, cooldown_seconds=10, clock=lambda: now[0]
    )
    breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert not breaker.allow()
    now[0] = 10.0
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # only one at a time
    breaker.record_failure()
    assert not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.allow() and breaker.allow()


# Event streaming through the outbox


def queued(app) -> int:
    with app.app_context():
        return db.session.scalar(
            select(func.count()).where(PersonalizeOutbox.sent_at.is_(None))
        )


def test_events_queue_in_the_outbox_and_survive_an_outage(database_url, catalog):
    fake = FakePersonalize().start()
    fake.mode = "error"
    try:
        app = personalize_app(database_url, AWS_PERSONALIZE_ENDPOINT_URL=fake.url)
        engine = app.extensions["personalization"]
        procedures = [
            catalog_id(app, Procedure, s)
            for s in ("botox", "dysport", "xeomin", "kybella")
        ]
        with app.app_context():
            for visitor in ("a", "b"):
                engine.record_interactions(
                    visitor * 32,
                    f"session-{visitor}",
                    [
                        Interaction("view", ItemKey("procedure", pid))
                        for pid in procedures
                    ]
                    * 3
                    + [Interaction("view", None, {"path": "/"})],
                )
        assert queued(app) == 24  # page views carry no item: not queued

        with app.app_context():
            outage = engine.sync_personalize_events(client_of(app))
        assert outage["sent"] == 0 and outage["failed"] == 1
        assert queued(app) == 24

        failed_calls = len(fake.calls("/events"))
        fake.mode = "ok"
        runner = app.test_cli_runner()
        client_of(app).events_breaker.record_success()
        result = runner.invoke(args=["personalization", "sync-events"])
        assert result.exit_code == 0, result.output
        assert "Sent 24 events; 0 still queued." in result.output
        assert queued(app) == 0
        batches = fake.calls("/events")[failed_calls:]
        assert all(1 <= len(b["eventList"]) <= 10 for b in batches)
        assert sum(len(b["eventList"]) for b in batches) == 24
        assert {b["sessionId"] for b in batches} == {"session-a", "session-b"}
        first = batches[0]["eventList"][0]
        assert first["eventType"] == "view" and first["eventValue"] == 0.1
        assert first["itemId"].startswith("procedure:")
    finally:
        fake.stop()


def test_put_events_request_matches_the_api_model(database_url, catalog):
    app = personalize_app(database_url)
    events = client_of(app).events
    injectables = catalog_id(app, Category, "injectables")
    with app.app_context():
        app.extensions["personalization"].record_interactions(
            "a" * 32, "s1", [Interaction("click", ItemKey("category", injectables))]
        )
    with Stubber(events) as stub:
        stub.add_response(
            "put_events",
            {},
            {
                "trackingId": "tracking-1",
                "userId": "a" * 32,
                "sessionId": "s1",
                "eventList": [
                    {
                        "eventId": ANY,
                        "eventType": "click",
                        "eventValue": 0.3,
                        "itemId": f"category:{injectables}",
                        "sentAt": ANY,
                    }
                ],
            },
        )
        with app.app_context():
            result = app.extensions["personalization"].sync_personalize_events(
                client_of(app)
            )
        stub.assert_no_pending_responses()
    assert result == {"sent": 1, "pending": 0, "failed": 0, "deleted": 0}


def test_parallel_syncs_never_send_an_event_twice(database_url, catalog):
    fake = FakePersonalize().start()
    try:
        app = personalize_app(database_url, AWS_PERSONALIZE_ENDPOINT_URL=fake.url)
        engine = app.extensions["personalization"]
        injectables = catalog_id(app, Category, "injectables")
        with app.app_context():
            engine.record_interactions(
                "a" * 32,
                "s",
                [Interaction("click", ItemKey("category", injectables))] * 30,
            )
            first = engine.sync_personalize_events(client_of(app), max_events=12)
            second = engine.sync_personalize_events(client_of(app), max_events=100)
        assert first["sent"] == 12 and second["sent"] == 18
        ids = [e["eventId"] for b in fake.calls("/events") for e in b["eventList"]]
        assert len(ids) == len(set(ids)) == 30
    finally:
        fake.stop()


def test_event_limits_are_enforced_locally():
    sent_at = datetime(2026, 1, 1, tzinfo=UTC)
    event = personalize_event(
        "1", "click", "procedure:1", 0.3, sent_at, properties={"x": "y" * 2000}
    )
    assert "properties" not in event
    small = personalize_event("1", "click", "procedure:1", 0.3, sent_at, {"k": "v"})
    assert json.loads(small["properties"]) == {"k": "v"}
    many = personalize_event(
        "1", "view", "procedure:1", 0.1, sent_at, impression=[str(i) for i in range(40)]
    )
    assert len(many["impression"]) == MAX_IMPRESSION_IDS
    client = PersonalizeClient(
        tracking_id="t", events_client=boto3.client("personalize-events", "us-east-1")
    )
    with pytest.raises(ValueError, match="1 to 10 events"):
        client.put_events("u", "s", [event] * 11)


def test_sync_command_explains_when_streaming_is_off(runner):
    result = runner.invoke(args=["personalization", "sync-events"])
    assert result.exit_code != 0
    assert "AWS_PERSONALIZE_TRACKING_ID" in result.output


# Bulk export


def test_export_writes_personalize_datasets(catalog, runner, tmp_path):
    engine = catalog.extensions["personalization"]
    botox = catalog_id(catalog, Procedure, "botox")
    skin = catalog_id(catalog, Category, "skin-resurfacing")
    with catalog.app_context():
        engine.record_interactions(
            "a" * 32,
            "s",
            [Interaction("click", ItemKey("procedure", botox)), Interaction("view")],
        )
        engine.record_interactions(
            "b" * 32, "s", [Interaction("form_submit", ItemKey("category", skin))]
        )
    result = runner.invoke(
        args=["personalization", "export", "--output-dir", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"

    def rows(name):
        with open(out / f"{name}.csv", newline="") as handle:
            return list(csv.reader(handle))

    interactions = rows("interactions")
    assert interactions[0] == [
        "USER_ID",
        "ITEM_ID",
        "TIMESTAMP",
        "EVENT_TYPE",
        "EVENT_VALUE",
        "IMPRESSION",
    ]
    assert [r[1] for r in interactions[1:]] == [
        f"procedure:{botox}",
        f"category:{skin}",
    ]
    assert abs(int(interactions[1][2]) - time.time()) < 60
    assert [r[4] for r in interactions[1:]] == ["0.3", "0.5"]

    items = rows("items")
    assert items[0] == ["ITEM_ID", "ITEM_TYPE", "CATEGORY", "CREATION_TIMESTAMP"]
    assert len(items) - 1 == 8 + 60 + 40 + 20
    by_id = {r[0]: r for r in items[1:]}
    assert by_id[f"procedure:{botox}"][1:3] == ["procedure", "injectables"]
    doctor_categories = [r[2] for r in items[1:] if r[1] == "doctor"]
    assert any("|" in value for value in doctor_categories)

    users = rows("users")
    assert users[1:] == [["a" * 32, "injectables"], ["b" * 32, "skin-resurfacing"]]

    for name in ("interactions", "items", "users"):
        schema = json.loads((out / f"{name}_schema.json").read_text())
        assert schema["type"] == "record"
        assert [f["name"] for f in schema["fields"]] == rows(name)[0]
