"""Personalize as AWS documents it: the few event types with values and the
eventValueThreshold, impressions in the export and in PutEvents, the
user-personalization campaign with its dismissed-items filter, PutItems and
PutUsers, and "forget me" as a data deletion job. Every call goes through
botocore's Stubber, which checks it against the service's API model."""

import csv
import json

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
from models import (
    Category,
    PersonalizeOutbox,
    Procedure,
    RecommendationImpression,
    db,
)
from personalization.events import DEFAULT_INTERACTION_WEIGHTS, Interaction, ItemKey
from personalization.export import item_rows, user_rows
from personalization.outbox import DELETE_USER, MAX_ATTEMPTS
from personalize_client import (
    DISMISS,
    EVENT_VALUE_THRESHOLD,
    MAX_IMPRESSION_IDS,
    impression_ids,
    personalize_event_type,
)

RANKING = RANKING_CAMPAIGN
USER_CAMPAIGN = "arn:aws:personalize:us-east-1:123456789012:campaign/user"
DISMISSED = "arn:aws:personalize:us-east-1:123456789012:filter/not-dismissed"
GROUP = "arn:aws:personalize:us-east-1:123456789012:dataset-group/antidote"
ITEMS = "arn:aws:personalize:us-east-1:123456789012:dataset/antidote/ITEMS"
USERS = "arn:aws:personalize:us-east-1:123456789012:dataset/antidote/USERS"
ROLE = "arn:aws:iam::123456789012:role/PersonalizeS3"
LIST_ID = "0123456789abcdef"
API = "/personalization/recommendations/"
# boto3 needs credentials of some kind; never a real profile.
pytestmark = pytest.mark.usefixtures("fake_credentials")


DELETION = {
    "AWS_PERSONALIZE_DATASET_GROUP_ARN": GROUP,
    "AWS_PERSONALIZE_DELETION_BUCKET": "antidote-personalize",
    "AWS_PERSONALIZE_ROLE_ARN": ROLE,
}


def engine_of(app):
    return app.extensions["personalization"]


def client_of(app):
    return app.extensions["personalize_client"]


def show_list(app, visitor_id: str, procedure_ids: list[int]) -> None:
    """A recommendation list the visitor was shown, as impressions.py stores it."""
    with app.app_context():
        db.session.add(
            RecommendationImpression(
                id=LIST_ID,
                user_id=visitor_id,
                request_id="r" * 32,
                list_name="home:procedure",
                item_kind="procedure",
                items=json.dumps([[pid, "engine"] for pid in procedure_ids]),
                item_count=len(procedure_ids),
            )
        )
        db.session.commit()


# The event types and values


def test_every_interaction_type_maps_to_a_few_event_types():
    mapped = {
        kind: personalize_event_type(kind, weight)
        for kind, weight in DEFAULT_INTERACTION_WEIGHTS.items()
    }
    assert set(mapped.values()) == {"view", "click", "save", "convert", DISMISS}
    for kind, weight in DEFAULT_INTERACTION_WEIGHTS.items():
        if weight < 0:  # negatives: dismissals, below the training threshold
            assert mapped[kind] == DISMISS and weight < EVENT_VALUE_THRESHOLD
        else:
            assert mapped[kind] != DISMISS and weight >= EVENT_VALUE_THRESHOLD
    assert personalize_event_type("engaged", 0.0) is None  # time spent: no signal
    assert personalize_event_type("click", -0.1) == DISMISS  # a weight override
    assert personalize_event_type("hide", 0.2) is None  # ambiguous: not sent


def test_impressions_fit_putevents_and_the_impression_column():
    ids = [f"procedure:{n}" for n in range(40)]
    assert impression_ids(ids) == ids[:MAX_IMPRESSION_IDS]
    long = ["x" * 100] * 20
    kept = impression_ids(long)
    assert len("|".join(kept)) <= 1000 and len(kept) == 9


# The bulk export


def test_export_sends_mapped_types_values_and_impressions(catalog, runner, tmp_path):
    botox, dysport, kybella = (
        catalog_id(catalog, Procedure, slug) for slug in ("botox", "dysport", "kybella")
    )
    show_list(catalog, "a" * 32, [botox, dysport, kybella])
    card = {"list_id": LIST_ID, "position": 2}
    with catalog.app_context():
        engine_of(catalog).record_interactions(
            "a" * 32,
            "s",
            [
                Interaction("click", ItemKey("procedure", dysport), card),
                Interaction("not_interested", ItemKey("procedure", kybella), card),
                Interaction("engaged", ItemKey("procedure", botox), {"seconds": 30}),
                Interaction("bookmark", ItemKey("procedure", botox)),
            ],
        )
        # Another visitor naming a list they were not shown gets no impression.
        engine_of(catalog).record_interactions(
            "b" * 32, "s", [Interaction("click", ItemKey("procedure", botox), card)]
        )
    result = runner.invoke(
        args=["personalization", "export", "--output-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    with open(tmp_path / "interactions.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][3:] == ["EVENT_TYPE", "EVENT_VALUE", "IMPRESSION"]
    shown = f"procedure:{botox}|procedure:{dysport}|procedure:{kybella}"
    assert [row[3:] for row in rows[1:]] == [
        ["click", "0.3", shown],
        ["dismiss", "-0.24", shown],
        ["save", "0.54", ""],
        ["click", "0.3", ""],
    ]
    schema = json.loads((tmp_path / "interactions_schema.json").read_text())
    assert schema["fields"][-1] == {"name": "IMPRESSION", "type": ["null", "string"]}


# PutEvents


def test_put_events_carry_mapped_types_and_the_lists_shown(database_url, catalog):
    app = personalize_app(database_url)
    botox, dysport = (catalog_id(app, Procedure, s) for s in ("botox", "dysport"))
    show_list(app, "a" * 32, [botox, dysport])
    card = {"list_id": LIST_ID, "position": 1}
    with app.app_context():
        engine_of(app).record_interactions(
            "a" * 32,
            "s1",
            [
                Interaction("click", ItemKey("procedure", botox), card),
                Interaction("hide", ItemKey("procedure", dysport), card),
                Interaction("engaged", ItemKey("procedure", botox), {"seconds": 5}),
            ],
        )
    shown = [f"procedure:{botox}", f"procedure:{dysport}"]
    with Stubber(client_of(app).events) as stub:
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
                        "itemId": f"procedure:{botox}",
                        "sentAt": ANY,
                        "impression": shown,
                    },
                    {
                        "eventId": ANY,
                        "eventType": "dismiss",
                        "eventValue": -0.15,
                        "itemId": f"procedure:{dysport}",
                        "sentAt": ANY,
                        "impression": shown,
                    },
                ],
            },
        )
        with app.app_context():
            result = engine_of(app).sync_personalize_events(client_of(app))
        stub.assert_no_pending_responses()
    assert result["sent"] == 2 and result["pending"] == 0


# The user-personalization campaign


def test_user_recommendations_request_matches_the_api_model(database_url, catalog):
    app = personalize_app(
        database_url,
        AWS_PERSONALIZE_USER_CAMPAIGN_ARN=USER_CAMPAIGN,
        AWS_PERSONALIZE_DISMISSED_FILTER_ARN=DISMISSED,
    )
    with Stubber(client_of(app).runtime) as stub:
        stub.add_response(
            "get_recommendations",
            {"itemList": [{"itemId": "procedure:3", "score": 0.4}]},
            {
                "campaignArn": USER_CAMPAIGN,
                "userId": "a" * 32,
                "numResults": 6,
                "filterArn": DISMISSED,
                "filterValues": {"ITEM_TYPE": '"procedure"'},
            },
        )
        found = client_of(app).user_recommendations("a" * 32, "procedure", 6)
        stub.assert_no_pending_responses()
    assert found == [("procedure:3", 0.4)]


def interested_visitor(app) -> Browser:
    visitor = Browser(app)
    visitor.get("/")
    for slug in ("botox", "dysport", "xeomin"):
        visitor.track(
            {
                "interaction_type": "click",
                "target_type": "procedure",
                "target_id": catalog_id(app, Procedure, slug),
            }
        )
    return visitor


def test_home_sections_come_from_the_user_campaign(database_url, catalog):
    fake = FakePersonalize().start()
    try:
        app = personalize_app(
            database_url,
            AWS_PERSONALIZE_ENDPOINT_URL=fake.url,
            AWS_PERSONALIZE_USER_CAMPAIGN_ARN=USER_CAMPAIGN,
            AWS_PERSONALIZE_DISMISSED_FILTER_ARN=DISMISSED,
        )
        wanted = [
            catalog_id(app, Procedure, slug) for slug in ("facelift", "rhinoplasty")
        ]
        fake.recommend = lambda user, kind: (
            [f"procedure:{pid}" for pid in wanted] + ["procedure:999999"]
            if kind == "procedure"
            else []
        )
        visitor = interested_visitor(app)
        body = visitor.get(API + "procedures?limit=6").get_json()
        assert body["source"] == "personalize"
        assert [item["id"] for item in body["items"][:2]] == wanted
        assert len(body["items"]) == 6  # the local engine filled the rest
        asked = fake.calls("/recommendations")[-1]
        assert asked["filterArn"] == DISMISSED
        assert fake.calls("/personalize-ranking") == []  # not re-ranked as well
        assert visitor.get("/").status_code == 200
        # A failing campaign: the local order, at once.
        fake.mode = "error"
        body = visitor.get(API + "procedures?limit=6").get_json()
        assert body["source"] != "personalize" and len(body["items"]) == 6
        # A visitor with no history costs no call.
        calls = len(fake.calls("/recommendations"))
        assert Browser(app).get(API + "procedures").get_json()["source"] == "popular"
        assert len(fake.calls("/recommendations")) == calls
    finally:
        fake.stop()


# PutItems and PutUsers


def test_sync_catalog_puts_items_and_users_ten_at_a_time(database_url, catalog):
    app = personalize_app(
        database_url,
        AWS_PERSONALIZE_ITEMS_DATASET_ARN=ITEMS,
        AWS_PERSONALIZE_USERS_DATASET_ARN=USERS,
    )
    injectables = catalog_id(app, Category, "injectables")
    with app.app_context():
        engine_of(app).record_interactions(
            "a" * 32, "s", [Interaction("click", ItemKey("category", injectables))]
        )
        items = [
            {
                "itemId": item_id,
                "properties": json.dumps(
                    {"itemType": kind, "category": category, "creationTimestamp": at}
                ),
            }
            for item_id, kind, category, at in item_rows(db.session)
        ]
        users = list(user_rows(db.session))
    assert len(items) == 128 and users == [["a" * 32, "injectables"]]
    with Stubber(client_of(app).events) as stub:
        for start in range(0, len(items), 10):
            stub.add_response(
                "put_items",
                {},
                {"datasetArn": ITEMS, "items": items[start : start + 10]},
            )
        stub.add_response(
            "put_users",
            {},
            {
                "datasetArn": USERS,
                "users": [
                    {"userId": "a" * 32, "properties": '{"topCategory": "injectables"}'}
                ],
            },
        )
        result = app.test_cli_runner().invoke(args=["personalization", "sync-catalog"])
        stub.assert_no_pending_responses()
    assert result.exit_code == 0, result.output
    assert "Sent 128 items and 1 visitors." in result.output


def test_sync_catalog_fails_loudly_when_personalize_refuses(database_url, catalog):
    app = personalize_app(database_url, AWS_PERSONALIZE_ITEMS_DATASET_ARN=ITEMS)
    with Stubber(client_of(app).events) as stub:
        stub.add_client_error("put_items", "ResourceNotFoundException", 404)
        result = app.test_cli_runner().invoke(args=["personalization", "sync-catalog"])
    assert result.exit_code != 0
    assert "Personalize refused a call" in result.output


def test_a_card_of_someone_elses_list_carries_no_impression(database_url, catalog):
    app = personalize_app(database_url)
    botox = catalog_id(app, Procedure, "botox")
    show_list(app, "a" * 32, [botox])
    with app.app_context():
        engine_of(app).record_interactions(
            "b" * 32,
            "s",
            [Interaction("click", ItemKey("procedure", botox), {"list_id": LIST_ID})],
        )
        impression = db.session.scalar(select(PersonalizeOutbox.impression))
    assert impression is None


def test_sync_catalog_explains_when_no_dataset_is_set(runner):
    result = runner.invoke(args=["personalization", "sync-catalog"])
    assert result.exit_code != 0
    assert "AWS_PERSONALIZE_ITEMS_DATASET_ARN" in result.output


# "Forget me"


def deletions(app) -> list[tuple[str, int, bool]]:
    with app.app_context():
        return [
            (row.user_id, row.attempts, row.sent_at is not None)
            for row in db.session.scalars(
                select(PersonalizeOutbox).where(
                    PersonalizeOutbox.event_type == DELETE_USER
                )
            )
        ]


def test_forget_me_starts_a_personalize_data_deletion_job(database_url, catalog):
    app = personalize_app(database_url, **DELETION)
    visitor = interested_visitor(app)
    with app.app_context():  # the visitor's clicks, queued for PutEvents
        forgotten = db.session.scalar(select(PersonalizeOutbox.user_id).limit(1))
    assert visitor.post("/personalization/forget").status_code == 200
    assert deletions(app) == [(forgotten, 0, False)]
    with app.app_context():  # the visitor's own events went with the rest
        assert (
            db.session.scalar(
                select(func.count()).where(
                    PersonalizeOutbox.user_id == forgotten,
                    PersonalizeOutbox.event_type != DELETE_USER,
                )
            )
            == 0
        )
    client = client_of(app)
    with Stubber(client.s3) as s3, Stubber(client.admin) as admin:
        s3.add_response(
            "put_object",
            {},
            {
                "Bucket": "antidote-personalize",
                "Key": ANY,
                "Body": f"USER_ID\n{forgotten}\n".encode(),
                "ContentType": "text/csv",
            },
        )
        admin.add_response(
            "create_data_deletion_job",
            {"dataDeletionJobArn": f"{GROUP}/job"},
            {
                "jobName": ANY,
                "datasetGroupArn": GROUP,
                "dataSource": {"dataLocation": ANY},
                "roleArn": ROLE,
            },
        )
        result = app.test_cli_runner().invoke(args=["personalization", "sync-events"])
        s3.assert_no_pending_responses()
        admin.assert_no_pending_responses()
    assert result.exit_code == 0, result.output
    assert "Asked Personalize to delete 1 visitors." in result.output
    assert deletions(app) == [(forgotten, 0, True)]


def test_a_refused_deletion_is_retried_never_dropped(database_url, catalog):
    app = personalize_app(
        database_url, AWS_PERSONALIZE_FAILURE_THRESHOLD=100, **DELETION
    )
    with app.app_context():
        engine_of(app).forget_visitor("c" * 32)
    client = client_of(app)
    with Stubber(client.s3) as s3:
        for _ in range(MAX_ATTEMPTS + 1):
            s3.add_client_error("put_object", "AccessDenied", http_status_code=403)
        with app.app_context():
            for _ in range(MAX_ATTEMPTS + 1):
                result = engine_of(app).sync_personalize_events(client)
                assert result["failed"] == 1 and result["deleted"] == 0
        s3.assert_no_pending_responses()
    assert deletions(app) == [("c" * 32, MAX_ATTEMPTS + 1, False)]
    with app.app_context():
        backlog = engine_of(app).outbox_backlog()
    assert backlog.pending == 1 and backlog.dead_letters == 0


@pytest.mark.parametrize(
    "configured", [{}, {"AWS_PERSONALIZE_ENABLED": False, **DELETION}]
)
def test_forget_queues_nothing_without_personalize_deletion(
    database_url, catalog, configured
):
    app = personalize_app(database_url, **configured)
    with app.app_context():
        engine_of(app).forget_visitor("d" * 32)
    assert deletions(app) == []
