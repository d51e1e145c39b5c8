"""A corpus of hostile input for every endpoint: each gets a clear 4xx (or, where
the input is harmless text, a normal answer), nothing invalid is stored, and
injected HTML is never rendered unescaped."""

import json

import pytest
from sqlalchemy import func, select

from app import create_app
from helpers import Browser, app_config, catalog_id, stored_interactions
from models import Category, Procedure, UserCategoryAffinity, UserInteraction, db

TRACK = "/personalization/track-interaction"
WEBHOOK = "/webhooks/amplitude/"
WEBHOOK_SECRET = "hostile-test-webhook-secret"

SQL_INJECTIONS = [
    "' OR '1'='1",
    "1; DROP TABLE user_interactions; --",
    "botox' UNION SELECT user_id, NULL FROM user_interactions --",
    "%' AND 1=(SELECT COUNT(*) FROM categories) AND '%'='",
    "\\'; SELECT pg_sleep(5); --",
]
HTML_INJECTIONS = [
    "<script>alert('x')</script>",
    '"><img src=x onerror=alert(1)>',
    "<svg/onload=alert(1)>",
    "javascript:alert(1)",
    "</title><script>alert(1)</script>",
]
ODD_TEXT = [
    "zero\u200bwidth",
    "right\u202eto-left override",
    "emoji 💉🧴✨",
    "tab\tnew\nline\rreturn",
    "bell\x07escape\x1b[31m",
    "ＦＵＬＬＷＩＤＴＨ",
    "a" * 3000,
]


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def deep_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def tracked_events(app) -> list:
    """Everything stored but the page views the requests themselves logged."""
    return [row for row in stored_interactions(app) if row.interaction_type != "view"]


@pytest.fixture
def visitor(catalog):
    return Browser(catalog)


# Tracking endpoint


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b'{"events": [' + b"1," * 40000 + b"1]}", 413, id="oversized"),
        pytest.param(deep_json(30_000).encode(), 400, id="deep-array"),
        pytest.param(deep_object(10_000).encode(), 400, id="deep-object"),
        pytest.param(b"\xff\xfe\x00garbage", 400, id="not-utf8"),
        pytest.param(b'{"interaction_type": "click"', 400, id="truncated"),
        pytest.param(b"NaN", 400, id="bare-nan"),
        pytest.param(b'"click"', 400, id="string"),
        pytest.param(b"null", 400, id="null"),
        pytest.param(b"[]", 400, id="array"),
        pytest.param(b'{"events": {}}', 400, id="events-object"),
        pytest.param(b'{"events": []}', 400, id="events-empty"),
        pytest.param(b'{"events": [null, 1, "x", []]}', 400, id="events-junk"),
    ],
)
def test_tracking_refuses_malformed_bodies(catalog, visitor, body, status):
    answer = visitor.post(TRACK, data=body, content_type="application/json")
    assert answer.status_code == status
    assert answer.get_json()["error"]
    assert tracked_events(catalog) == []


WRONG_EVENTS = [
    {"interaction_type": ["click"], "target_type": "page"},
    {"interaction_type": "click", "target_type": {"$ne": None}, "target_id": 1},
    {"interaction_type": "click", "target_type": "procedure", "target_id": True},
    {"interaction_type": "click", "target_type": "procedure", "target_id": 1e300},
    {"interaction_type": "click", "target_type": "procedure", "target_id": -1},
    {"interaction_type": "click", "target_type": "procedure", "target_id": 2**63},
    {"interaction_type": "click", "target_type": "procedure", "target_id": "1 OR 1=1"},
    {"interaction_type": "click", "target_type": "users", "target_id": 1},
    {"interaction_type": "view", "target_type": "page", "metadata": "a" * 10},
    {"interaction_type": "view", "target_type": "page", "metadata": {"k": "v" * 3000}},
    {"interaction_type": "search", "target_type": "page", "metadata": {"query": 42}},
    {"interaction_type": "view", "target_type": "page", "user_id": "someone-else"},
]


@pytest.mark.parametrize("event", WRONG_EVENTS)
def test_tracking_refuses_wrong_types_and_stores_nothing(catalog, visitor, event):
    answer = visitor.track(event)
    assert answer.status_code == 400
    assert answer.get_json()["rejected"][0]["error"]
    assert tracked_events(catalog) == []


def test_lone_surrogates_in_metadata_are_refused(catalog, visitor):
    body = (
        '{"interaction_type": "view", "target_type": "page",'
        ' "metadata": {"q": "\\ud800"}}'
    )
    answer = visitor.post(TRACK, data=body, content_type="application/json")
    assert answer.status_code == 400
    assert "Unicode" in answer.get_json()["rejected"][0]["error"]
    assert tracked_events(catalog) == []


@pytest.mark.parametrize("text", SQL_INJECTIONS + HTML_INJECTIONS + ODD_TEXT[:-1])
def test_injection_strings_in_metadata_are_stored_as_plain_data(catalog, visitor, text):
    """Metadata is data: stored verbatim through bound parameters, never run."""
    event = {
        "interaction_type": "search",
        "target_type": "page",
        "target_id": None,
        "metadata": {"query": text, text[:40]: text},
    }
    answer = visitor.track(event)
    assert answer.status_code == 202, answer.get_json()
    with catalog.app_context():
        [stored] = db.session.scalars(
            select(UserInteraction.extra_data).where(
                UserInteraction.interaction_type == "search"
            )
        ).all()
    assert json.loads(stored)["query"] == text
    with catalog.app_context():
        assert db.session.scalar(select(func.count()).select_from(Category)) == 8


def test_a_batch_keeps_its_valid_events_among_hostile_ones(catalog, visitor):
    category = catalog_id(catalog, Category, "injectables")
    good = {
        "interaction_type": "click",
        "target_type": "category",
        "target_id": category,
    }
    answer = visitor.track(*WRONG_EVENTS, good)
    assert answer.status_code == 202
    body = answer.get_json()
    assert body["accepted"] == 1
    assert [r["index"] for r in body["rejected"]] == list(range(len(WRONG_EVENTS)))
    assert [(r.target_type, r.target_id) for r in tracked_events(catalog)] == [
        ("category", category)
    ]


# Pages, search and recommendations


@pytest.mark.parametrize("text", SQL_INJECTIONS + HTML_INJECTIONS + ODD_TEXT)
def test_search_treats_hostile_queries_as_text_and_escapes_them(catalog, client, text):
    answer = client.get("/search", query_string={"q": text})
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    for dangerous in ("<script>alert", "<img src=x", "<svg/onload"):
        assert dangerous not in html
    if text in HTML_INJECTIONS[:3]:
        assert "&lt;" in html
    with catalog.app_context():
        assert db.session.scalar(select(func.count()).select_from(Category)) == 8


@pytest.mark.parametrize(
    "path",
    [
        "/procedures/<script>alert(1)</script>",
        "/categories/' OR '1'='1",
        "/doctors/..%2F..%2Fetc%2Fpasswd",
        "/packages/%ff%fe",
        "/procedures/" + "x" * 3000,
    ],
)
def test_hostile_slugs_are_a_plain_404(catalog, client, path):
    answer = client.get(path)
    assert answer.status_code == 404
    assert "<script>alert" not in answer.get_data(as_text=True)


@pytest.mark.parametrize(
    "url",
    [
        "/search?q=botox%00",
        "/procedures/botox%00",
        "/personalization/recommendations/procedures?item=botox%00",
        "/?utm%00=1",
    ],
)
def test_nul_characters_in_urls_are_refused(catalog, client, url):
    answer = client.get(url, headers={"Accept": "application/json"})
    assert answer.status_code == 400
    assert "NUL" in answer.get_json()["error"]


@pytest.mark.parametrize(
    "path", ["/", "/search", "/personalization/recommendations/doctors", "/healthz"]
)
def test_huge_query_strings_are_refused(catalog, client, path):
    answer = client.get(
        path + "?q=" + "a" * 10_000, headers={"Accept": "application/json"}
    )
    assert answer.status_code == 414
    assert "query string" in answer.get_json()["error"]


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "-1"},
        {"limit": "1e3"},
        {"limit": "9" * 40},
        {"limit": "5 OR 1=1"},
        {"item": "' OR '1'='1"},
        {"item": "<script>"},
    ],
)
def test_recommendations_refuse_bad_parameters(catalog, client, query):
    answer = client.get(
        "/personalization/recommendations/procedures", query_string=query
    )
    assert answer.status_code in (400, 404)
    assert answer.get_json()["error"]


# Identity: forged X-Forwarded-For


@pytest.mark.parametrize(
    "forged",
    [
        "1.2.3.4",
        "127.0.0.1, 10.0.0.1",
        "not-an-address",
        "<script>",
        ", ".join(f"10.0.0.{n}" for n in range(200)),
    ],
)
def test_forged_forwarded_for_changes_nobody_s_identity(catalog, forged):
    """Identity is the cookie: a forged header neither makes the same browser a
    new visitor nor another browser this one."""
    plain, forging = Browser(catalog), Browser(catalog)
    plain.get("/procedures/botox")
    for _ in range(2):
        answer = forging.get("/procedures/botox", headers={"X-Forwarded-For": forged})
        assert answer.status_code == 200
    visitors = [row.user_id for row in stored_interactions(catalog)]
    assert len(visitors) == 3 and len(set(visitors)) == 2
    assert visitors[1] == visitors[2] != visitors[0]


def test_forged_forwarded_for_behind_one_proxy_is_still_served(database_url, catalog):
    app = create_app(app_config(database_url, TRUSTED_PROXY_COUNT=1))
    answer = app.test_client().get(
        "/", headers={"X-Forwarded-For": "<script>, not-an-ip, 999.999.1.1"}
    )
    assert answer.status_code == 200


# Forget and privacy forms


@pytest.mark.parametrize(
    "body",
    [b"x" * (3 * 1024 * 1024), deep_json(50_000).encode(), b"\x00\x01\x02"],
    ids=["oversized", "deep", "binary"],
)
def test_forget_ignores_or_refuses_hostile_bodies(catalog, visitor, body):
    visitor.get("/procedures/botox")
    answer = visitor.post(
        "/personalization/forget", data=body, content_type="application/json"
    )
    assert answer.status_code in (200, 413)
    if answer.status_code == 200:
        assert stored_interactions(catalog) == []


@pytest.mark.parametrize(
    "form",
    [
        {"choice": "<script>"},
        {"choice": "on", "next": "https://evil.example/"},
        {"choice": "on", "next": "//evil.example/"},
        {"choice": "on", "next": "/\\evil.example"},
        {"choice": ["on", "off"]},
    ],
)
def test_privacy_choice_refuses_hostile_forms(catalog, visitor, form):
    answer = visitor.post("/privacy/tracking", data=form)
    assert answer.status_code in (303, 400)
    if answer.status_code == 303:
        assert answer.headers["Location"].startswith("/")
        assert not answer.headers["Location"].startswith("//")


# Webhook


@pytest.fixture
def hook(database_url, catalog):
    app = create_app(app_config(database_url, AMPLITUDE_WEBHOOK_SECRET=WEBHOOK_SECRET))
    client = app.test_client()

    def post(body: bytes, **headers):
        headers.setdefault("Authorization", f"Bearer {WEBHOOK_SECRET}")
        return client.post(
            WEBHOOK, data=body, content_type="application/json", headers=headers
        )

    return post


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b"[" + b"{}," * 400_000 + b"{}]", 413, id="oversized"),
        pytest.param(deep_json(100_000).encode(), 400, id="deep-array"),
        pytest.param(deep_object(100_000).encode(), 400, id="deep-object"),
        pytest.param(b"\xff\xfe", 400, id="not-utf8"),
        pytest.param(b'"event"', 400, id="string"),
        pytest.param(b'{"events": "x"}', 400, id="events-string"),
        pytest.param(b"[" + b"{}," * 2500 + b"{}]", 413, id="too-many-events"),
    ],
)
def test_webhook_refuses_malformed_bodies(catalog, hook, body, status):
    answer = hook(body)
    assert answer.status_code == status
    assert answer.get_json()["error"]
    assert stored_interactions(catalog) == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer ' OR '1'='1"},
        {"Authorization": "Bearer " + "x" * 10_000},
        {"Authorization": "Basic " + WEBHOOK_SECRET},
        {"Authorization": "Bearer", "X-Webhook-Token": ""},
        {"Authorization": "Bearer é" + WEBHOOK_SECRET},
    ],
)
def test_webhook_refuses_forged_tokens(catalog, hook, headers):
    answer = hook(b'{"event_type": "view", "user_id": "u"}', **headers)
    assert answer.status_code == 401
    assert stored_interactions(catalog) == []


def test_webhook_skips_hostile_events_and_keeps_good_ones(catalog, hook):
    botox = catalog_id(catalog, Procedure, "botox")
    events = [
        {"event_type": "<script>", "user_id": "' OR 1=1 --"},
        {"event_type": ["view"], "user_id": "u1"},
        {"event_type": "view", "user_id": {"$gt": ""}},
        {"event_type": "view", "user_id": "u2", "event_time": "'; DROP TABLE x;--"},
        {
            "event_type": "click",
            "user_id": "\ud800",
            "event_properties": {"item_id": "procedure:botox"},
        },
        {
            "event_type": "click",
            "user_id": "u3",
            "event_properties": {"item_id": "procedure:botox\x00"},
        },
        {
            "event_type": "click",
            "user_id": "u4",
            "session_id": "\ud800",
            "insert_id": "\x00",
            "event_properties": {"item_id": "procedure:\udfff"},
        },
        {
            "event_type": "click",
            "user_id": "good-user",
            "insert_id": "good-1",
            "event_properties": {"item_id": "procedure:botox"},
        },
    ]
    answer = hook(json.dumps(events).encode())
    assert answer.status_code == 200
    result = answer.get_json()
    assert result["processed"] == 1
    assert result["skipped"] == len(events) - 1
    with catalog.app_context():
        stored = db.session.scalars(select(UserInteraction.target_id)).all()
        affinities = db.session.scalar(
            select(func.count()).select_from(UserCategoryAffinity)
        )
    assert stored == [botox]
    assert affinities == 1


@pytest.mark.parametrize("query", ["botox\x00", "\x00", "lip\x00filler"])
def test_search_events_with_nul_characters_are_refused(catalog, visitor, query):
    """A search event's query is searched for; NUL can match nothing and would
    break PostgreSQL, so the event is refused with its reason."""
    answer = visitor.track(
        {
            "interaction_type": "search",
            "target_type": "page",
            "metadata": {"query": query},
        }
    )
    assert answer.status_code == 400
    assert "NUL" in answer.get_json()["rejected"][0]["error"]
    assert tracked_events(catalog) == []


# Consultation requests


@pytest.mark.parametrize("text", SQL_INJECTIONS + HTML_INJECTIONS)
def test_consultation_requests_store_hostile_text_verbatim_and_escape_it(
    catalog, visitor, text
):
    from models import ConsultationRequest, Doctor

    with catalog.app_context():
        slug = db.session.scalar(select(Doctor.slug).order_by(Doctor.id))
    form = {
        "name": text[:100],
        "email": "maya@example.com",
        "message": text,
        "consent": "y",
    }
    answer = visitor.post(f"/doctors/{slug}/consultation", data=form)
    assert answer.status_code == 303
    page = visitor.get(answer.headers["Location"]).get_data(as_text=True)
    assert "<script>" not in page
    with catalog.app_context():
        [stored] = db.session.scalars(select(ConsultationRequest)).all()
        assert (stored.name, stored.message) == (text[:100].strip(), text.strip())
        assert db.session.scalar(select(func.count()).select_from(Category)) == 8


@pytest.mark.parametrize(
    "form",
    [
        {"name": "Maya", "email": "m@example.com", "consent": "y", "phone": "+" * 40},
        {"name": "Maya", "email": "m@" + "x" * 300 + ".com", "consent": "y"},
        {
            "name": "Maya",
            "email": "m@example.com",
            "consent": "y",
            "preferred_date": "2027-02-30",
        },
        {
            "name": "Maya",
            "email": "m@example.com",
            "consent": "y",
            "preferred_date": "9" * 50,
        },
        {},
    ],
)
def test_consultation_requests_refuse_hostile_forms(catalog, visitor, form):
    from models import ConsultationRequest, Doctor

    with catalog.app_context():
        slug = db.session.scalar(select(Doctor.slug).order_by(Doctor.id))
    answer = visitor.post(f"/doctors/{slug}/consultation", data=form)
    assert answer.status_code in (400, 422)
    with catalog.app_context():
        assert db.session.scalars(select(ConsultationRequest)).all() == []


def test_consultation_requests_survive_invalid_utf8(catalog, visitor):
    from models import ConsultationRequest, Doctor

    with catalog.app_context():
        slug = db.session.scalar(select(Doctor.slug).order_by(Doctor.id))
    body = b"name=Maya%ED%A0%80%FF&email=m%40example.com&consent=y"
    answer = visitor.post(
        f"/doctors/{slug}/consultation",
        data=body,
        content_type="application/x-www-form-urlencoded",
    )
    assert answer.status_code in (303, 422)
    with catalog.app_context():
        names = db.session.scalars(select(ConsultationRequest.name)).all()
    assert all(name.startswith("Maya") and "\x00" not in name for name in names)
