"""The recommender contract: one suite that every implementation must pass, as
implicit's and LensKit's models do, on a tiny catalog with known answers.

The checkerboard: visitors of group A click procedures of category A, visitors of
group B those of category B (B is the more popular). A test visitor of each group
has seen two of their group's procedures; the third, co-visited by the whole
group, is the known best next item. Popularity, knowing no one, must still put the
most popular unseen item first. The fake Personalize (a real boto3 client against
tests/fake_personalize.py; botocore validates every request against the API
model before it leaves) ranks a visitor's own group first, as a trained campaign
would, and its user campaign recommends the visitor's group.
"""

import pytest

from app import create_app
from fake_personalize import FakePersonalize
from helpers import app_config, empty_all_tables
from models import Category, Doctor, Procedure, db, doctor_procedures
from personalization.events import Interaction, ItemKey
from personalization.profiles import anonymous

RECOMMENDERS = [
    "popular",
    "category affinity",
    "co-visitation",
    "blended (served)",
    "personalize",
    "personalize (user)",
    "co-visitation blend",
]
KINDS = ("category", "procedure", "doctor")
CAMPAIGN = "arn:aws:personalize:us-east-1:123456789012:campaign/ranking"
SIMS = "arn:aws:personalize:us-east-1:123456789012:campaign/sims"
USER_CAMPAIGN = "arn:aws:personalize:us-east-1:123456789012:campaign/user"
DISMISSED = "arn:aws:personalize:us-east-1:123456789012:filter/not-dismissed"

# Group -> its category, procedures and doctor.
GROUPS = {
    "a": {"category": 1, "procedures": [11, 12, 13, 14], "doctor": 1},
    "b": {"category": 2, "procedures": [21, 22, 23, 24], "doctor": 2},
}
COLD_PROCEDURES = [31, 32]  # no interactions at all: tied at zero popularity
CATALOG_SIZE = {"category": 3, "procedure": 10, "doctor": 3}
# The test visitors: each has clicked their group's first two procedures.
TESTED = {"a": "tested-a", "b": "tested-b"}


def group_of(key: str) -> str | None:
    """Which group a Personalize item id or visitor id belongs to."""
    for name, group in GROUPS.items():
        members = {f"category:{group['category']}", f"doctor:{group['doctor']}"}
        members |= {f"procedure:{pid}" for pid in group["procedures"]}
        if key in members or key == TESTED[name] or key.startswith(f"{name}-"):
            return name
    return None


def rank_by_group(user_id: str, items: list[str]) -> list[str]:
    """The fake campaign's model: the visitor's own group first, order kept."""
    return sorted(items, key=lambda item: group_of(item) != group_of(user_id))


def recommend_in_group(user_id: str, kind: str) -> list[str]:
    """The fake user campaign: the items of the visitor's group, of the kind the
    filter names, as a trained campaign with its filter would give them."""
    group = group_of(user_id)
    if group is None:
        return []
    members = GROUPS[group]
    return {
        "category": [f"category:{members['category']}"],
        "procedure": [f"procedure:{pid}" for pid in members["procedures"]],
        "doctor": [f"doctor:{members['doctor']}"],
    }.get(kind, [])


def similar_in_group(item_id: str) -> list[str]:
    group = group_of(item_id)
    if group is None:
        return []
    others = [f"procedure:{pid}" for pid in GROUPS[group]["procedures"]]
    return [other for other in others if other != item_id]


def add_catalog() -> None:
    db.session.add_all(
        [
            Category(id=1, name="Group A", slug="group-a"),
            Category(id=2, name="Group B", slug="group-b"),
            Category(id=3, name="Cold", slug="cold"),
        ]
    )
    names = {11: "A one", 12: "A two", 13: "A three", 14: "A four"}
    names |= {21: "B one", 22: "B two", 23: "B three", 24: "B four"}
    names |= {31: "Cold one", 32: "Cold two"}
    db.session.add_all(
        Procedure(
            id=pid,
            name=name,
            slug=name.lower().replace(" ", "-"),
            category_id={1: 1, 2: 2, 3: 3}[pid // 10],
            price_min=100,
            price_max=200,
            recovery_time="none",
        )
        for pid, name in names.items()
    )
    # Doctor B is rated best, so it leads a list that knows no visitor.
    for did, name, rating in ((1, "A", 4.8), (2, "B", 4.9), (3, "C", 4.0)):
        db.session.add(
            Doctor(
                id=did,
                name=f"Doctor {name}",
                slug=f"doctor-{name.lower()}",
                title="MD",
                city="Miami",
                rating=rating,
                review_count=10,
            )
        )
    db.session.flush()
    performs = [(1, pid) for pid in GROUPS["a"]["procedures"]]
    performs += [(2, pid) for pid in GROUPS["b"]["procedures"]]
    performs += [(3, pid) for pid in COLD_PROCEDURES]
    db.session.execute(
        doctor_procedures.insert(),
        [{"doctor_id": d, "procedure_id": p} for d, p in performs],
    )
    db.session.commit()


def add_interactions(system) -> None:
    def clicks(visitor: str, *procedure_ids: int) -> None:
        system.record_interactions(
            visitor,
            "s",
            [Interaction("click", ItemKey("procedure", pid)) for pid in procedure_ids],
        )

    for i in range(6):
        clicks(f"a-{i}", 11, 12, 13)
    clicks("a-0", 14)
    for i in range(8):  # group B is the larger: popularity favours it
        clicks(f"b-{i}", 21, 22, 23)
    clicks("b-0", 24)
    clicks("b-extra", 21)
    clicks(TESTED["a"], 11, 12)
    clicks(TESTED["b"], 21, 22)


@pytest.fixture(scope="module")
def fake_personalize():
    fake = FakePersonalize().start()
    fake.rank = rank_by_group
    fake.similar_to = similar_in_group
    fake.recommend = recommend_in_group
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def checkerboard(database_url, fake_personalize):
    """An app over the checkerboard, with a Personalize campaign (the fake)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.delenv("AWS_PROFILE", raising=False)
        app = create_app(
            app_config(
                database_url,
                AWS_PERSONALIZE_ENABLED=True,
                AWS_PERSONALIZE_CAMPAIGN_ARN=CAMPAIGN,
                AWS_PERSONALIZE_SIMS_CAMPAIGN_ARN=SIMS,
                AWS_PERSONALIZE_USER_CAMPAIGN_ARN=USER_CAMPAIGN,
                AWS_PERSONALIZE_DISMISSED_FILTER_ARN=DISMISSED,
                AWS_PERSONALIZE_ENDPOINT_URL=fake_personalize.url,
                AWS_PERSONALIZE_READ_TIMEOUT=5,
            )
        )
        with app.app_context():
            add_catalog()
            add_interactions(app.extensions["personalization"])
            # Item neighbours are precomputed, as `flask personalization refresh`
            # does on a schedule.
            app.extensions["personalization"].refresh_statistics()
        yield app
        empty_all_tables(app)


@pytest.fixture(params=RECOMMENDERS)
def name(request) -> str:
    return request.param


def ask(app, name: str, visitor: str | None, kind: str, k: int, exclude=()):
    """One recommender's list, as (item, score, reason) triples."""
    with app.app_context():
        system = app.extensions["personalization"]
        recommender = system.recommenders.by_name()[name]
        profile = system.profiles.load(visitor) if visitor else anonymous()
        return recommender.recommend(profile, kind, k, exclude)


def seen_by(group: str) -> list[ItemKey]:
    return [ItemKey("procedure", pid) for pid in GROUPS[group]["procedures"][:2]]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 3, 50])
def test_at_most_k_distinct_items_of_the_kind_asked(checkerboard, name, kind, k):
    for visitor in (TESTED["a"], TESTED["b"], None):
        found = ask(checkerboard, name, visitor, kind, k)
        assert len(found) == min(k, CATALOG_SIZE[kind])  # at most k, and full
        items = [entry.item for entry in found]
        assert len(set(items)) == len(items)
        assert {item.kind for item in items} == {kind}


@pytest.mark.parametrize("kind", KINDS)
def test_excluded_items_never_come_back(checkerboard, name, kind):
    visitor = TESTED["a"]
    first_two = [entry.item for entry in ask(checkerboard, name, visitor, kind, 2)]
    exclude = first_two + seen_by("a")
    found = ask(checkerboard, name, visitor, kind, 50, exclude)
    assert not {entry.item for entry in found} & set(exclude)
    left = CATALOG_SIZE[kind] - len({item for item in exclude if item.kind == kind})
    assert len(found) == left


@pytest.mark.parametrize("kind", KINDS)
def test_scores_never_increase_down_the_list(checkerboard, name, kind):
    for visitor in (TESTED["a"], TESTED["b"], None):
        scores = [entry.score for entry in ask(checkerboard, name, visitor, kind, 50)]
        assert scores == sorted(scores, reverse=True)


def test_the_same_data_gives_the_same_answer(checkerboard, name, database_url):
    """Deterministic, and not an artifact of one process's caches: a second app on
    the same database answers the same. (Scores fade with the clock between calls,
    so they are compared to within 0.01%.)"""
    again = create_app(app_config(database_url, **fake_config(checkerboard)))

    def answer(app, kind):
        found = ask(app, name, TESTED["a"], kind, 50)
        return [(e.item, e.reason, e.source) for e in found], [e.score for e in found]

    for kind in KINDS:
        order, scores = answer(checkerboard, kind)
        for app in (checkerboard, again):
            other_order, other_scores = answer(app, kind)
            assert other_order == order
            assert other_scores == pytest.approx(scores, rel=1e-4)


def fake_config(app) -> dict:
    return {
        key: app.config[key]
        for key in app.config
        if key.startswith("AWS_PERSONALIZE") or key == "AWS_REGION"
    }


def test_ties_keep_the_catalog_order(checkerboard, name):
    """The two procedures nobody touched tie at zero; the catalog's order (doctors
    offering them, then name) places them, the same in every recommender."""
    for visitor in (TESTED["a"], None):
        order = [
            entry.item.id for entry in ask(checkerboard, name, visitor, "procedure", 50)
        ]
        assert order.index(31) < order.index(32)


@pytest.mark.parametrize("kind", KINDS)
def test_a_visitor_with_no_history_still_gets_a_full_list(checkerboard, name, kind):
    for visitor in (None, "never-seen-before"):
        found = ask(checkerboard, name, visitor, kind, 50)
        assert len(found) == CATALOG_SIZE[kind]


def test_similar_items_of_an_unknown_item_is_an_empty_list(checkerboard, name):
    with checkerboard.app_context():
        recommender = checkerboard.extensions["personalization"].recommenders.by_name()[
            name
        ]
        assert recommender.similar(ItemKey("procedure", 999_999), 5) == []
        found = recommender.similar(ItemKey("procedure", 11), 5)
    items = [entry.item for entry in found]
    assert 1 <= len(items) <= 5 and len(set(items)) == len(items)
    assert ItemKey("procedure", 11) not in items
    assert {item.kind for item in items} == {"procedure"}
    scores = [entry.score for entry in found]
    assert scores == sorted(scores, reverse=True)


# What comes first for the visitor of each group, by kind. Popularity knows no one:
# the most popular unseen item leads for both.
BEST = {
    "personal": {
        "a": {"category": 1, "procedure": 13, "doctor": 1},
        "b": {"category": 2, "procedure": 23, "doctor": 2},
    },
    "popular": {
        "a": {"category": 2, "procedure": 21, "doctor": 2},
        "b": {"category": 2, "procedure": 23, "doctor": 2},
    },
}


@pytest.mark.parametrize("group", ["a", "b"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_known_best_item_comes_first(checkerboard, name, group, kind):
    answers = BEST["popular" if name == "popular" else "personal"][group]
    found = ask(checkerboard, name, TESTED[group], kind, 5, seen_by(group))
    assert found[0].item == ItemKey(kind, answers[kind])


def test_the_user_campaign_answers_through_the_dismissed_filter(
    checkerboard, fake_personalize
):
    """The user-personalization recommender's first items are the campaign's,
    asked for with the filter and the kind as its $ITEM_TYPE."""
    found = ask(checkerboard, "personalize (user)", TESTED["a"], "procedure", 5)
    assert [entry.source for entry in found[:4]] == ["personalize"] * 4
    asked = [
        body for body in fake_personalize.calls("/recommendations") if "userId" in body
    ][-1]
    assert asked["campaignArn"] == USER_CAMPAIGN
    assert asked["userId"] == TESTED["a"]
    assert asked["filterArn"] == DISMISSED
    assert asked["filterValues"] == {"ITEM_TYPE": '"procedure"'}
