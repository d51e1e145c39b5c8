"""The API honours openapi.yaml: schemathesis generates requests from the contract
(valid and invalid ones) and checks every answer against it: no 5xx, documented
status codes, content types, headers and bodies, and authentication enforced."""

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from jsonschema_rs import Draft202012Validator
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import negative_data_rejection
from sqlalchemy import select

from app import create_app
from demo_catalog import seed_demo_catalog
from helpers import Browser, app_config, empty_all_tables, stored_interactions
from models import db
from personalization.items import MODELS
from routes import OPENAPI_SPEC

WEBHOOK_SECRET = "contract-test-webhook-secret"
# Examples per operation and mode: enough to cover every documented answer, small
# enough for `make test`. derandomize makes each run draw the same examples.
EXAMPLES = 100

# Invalid requests must be refused with a 4xx; 413 and 414 (too large) are
# refusals too, which schemathesis does not count by default.
CONTRACT_CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 406, 409]
                + [413, 414, 415, 422, 429]
            }
        }
    }
)
SPEC = yaml.safe_load(OPENAPI_SPEC.read_text(encoding="utf-8"))


def can_be_negated(operation: dict) -> bool:
    """Negative tests need something to break: a parameter or a body."""
    return bool(operation.get("parameters") or operation.get("requestBody"))


CASES = [
    (path, method.upper(), mode)
    for path, item in SPEC["paths"].items()
    for method, operation in item.items()
    for mode in GenerationMode
    if mode == GenerationMode.POSITIVE or can_be_negated(operation)
]


@pytest.fixture
def contract_app(database_url):
    app = create_app(
        app_config(
            database_url,
            AMPLITUDE_WEBHOOK_SECRET=WEBHOOK_SECRET,
            TRACKING_RATE_LIMIT="100000 per minute",
        )
    )
    with app.app_context():
        seed_demo_catalog()
    yield app
    empty_all_tables(app)


@pytest.fixture
def visitor(contract_app):
    """A browser that loaded a page: it holds the session cookie and CSRF token."""
    return Browser(contract_app, address="127.0.0.1")


# Hypothesis' own @given rather than schemathesis' pytest plugin, whose lazy
# fixture loader fails under pytest 9.2 ('Function' has no attribute '_nodeid').
@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_every_answer_matches_the_contract(contract_app, visitor, path, method, mode):
    """Valid requests (positive) and invalid ones (negative), drawn from the spec
    the app serves; each answer is checked against that spec."""
    schema = schemathesis.openapi.from_wsgi(
        "/openapi.json", contract_app, config=CONTRACT_CONFIG
    )
    if mode == GenerationMode.POSITIVE:
        schema.hook("map_body")(pointing_at_the_catalog(catalog_ids(contract_app)))
    operation = schema[path][method]
    credentials = {
        "X-CSRFToken": visitor.csrf_token(),
        "Authorization": f"Bearer {WEBHOOK_SECRET}",
    }

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def answers_match_the_contract(case):
        # A batch keeps its valid events when others are broken (nothing valid is
        # lost), so a batch with one broken event is rightly accepted: 202 with
        # the broken one listed in `rejected`.
        lenient = [negative_data_rejection] if is_batch(case) else []
        case.call_and_validate(
            session=visitor.client, headers=credentials, excluded_checks=lenient
        )

    answers_match_the_contract()


def catalog_ids(app) -> dict[str, list[int]]:
    with app.app_context():
        return {
            name: list(db.session.scalars(select(model.id).order_by(model.id)))
            for name, model in MODELS.items()
        }


def pointing_at_the_catalog(ids: dict[str, list[int]]):
    """A map_body hook: aim a generated event's target_id at a real catalog item.

    The schema says what an id looks like, not which ids exist; without this, almost
    every schema-valid event would name a missing item and be refused.
    """

    def aimed(event, kind="target_type", key="target_id"):
        if isinstance(event, dict) and isinstance(event.get(key), int | float):
            existing = ids.get(event.get(kind))
            if existing:
                chosen = existing[int(event[key]) % len(existing)]
                return {**event, key: chosen}
        return event

    def map_body(context, body):
        if isinstance(body, dict) and isinstance(body.get("events"), list):
            return {"events": [aimed(event) for event in body["events"]]}
        if isinstance(body, dict) and "item_type" in body:  # feedback
            return aimed(body, "item_type", "item_id")
        return aimed(body)

    return map_body


def is_batch(case) -> bool:
    return isinstance(case.body, dict) and "events" in case.body


def test_the_spec_is_valid_openapi_3_1_and_served_as_json(client):
    served = client.get("/openapi.json")
    assert served.status_code == 200
    assert served.mimetype == "application/json"
    spec = served.get_json()
    assert spec == yaml.safe_load(OPENAPI_SPEC.read_text())
    assert spec["openapi"].startswith("3.1")
    documented = set(spec["paths"])
    assert {
        "/personalization/track-interaction",
        "/personalization/recommendations/{content_type}",
        "/personalization/forget",
        "/healthz",
        "/webhooks/amplitude/",
    } <= documented


def test_the_event_schema_agrees_with_the_server(catalog, browser):
    """What the schema calls a valid event, the server stores; what it refuses,
    the server refuses: the spec is not looser or stricter than the code."""
    spec = yaml.safe_load(OPENAPI_SPEC.read_text())
    event_schema = {
        "$ref": "#/components/schemas/Event",
        "components": spec["components"],
    }
    validator = Draft202012Validator(event_schema)
    procedure = catalog_ids(catalog)["procedure"][0]
    events = [
        {
            "interaction_type": "click",
            "target_type": "procedure",
            "target_id": procedure,
        },
        {"interaction_type": "view", "target_type": "page", "target_id": None},
        {"interaction_type": "view", "target_type": "page"},
        {
            "interaction_type": "search",
            "target_type": "page",
            "metadata": {"query": "x"},
        },
        {
            "interaction_type": "search",
            "target_type": "page",
            "metadata": {"query": " "},
        },
        {"interaction_type": "search", "target_type": "page"},
        {"interaction_type": "click", "target_type": "procedure"},
        {"interaction_type": "click", "target_type": "page", "target_id": 3},
        {"interaction_type": "click", "target_type": "procedure", "target_id": 0},
        {"interaction_type": "click", "target_type": "procedure", "target_id": "7"},
        {"interaction_type": "hover", "target_type": "page"},
        {"interaction_type": "view", "target_type": "page", "metadata": []},
        {"interaction_type": "view", "target_type": "page", "extra": 1},
    ]
    for event in events:
        answer = browser.track(event)
        assert validator.is_valid(event) == (answer.status_code == 202), event
    assert len(stored_interactions(catalog)) >= 4
