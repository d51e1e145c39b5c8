"""The write path: requests append to the log, the aggregator folds it into the
statistics. Acknowledged events are durable (kill -9 right after the answer
loses none), each is counted exactly once whoever aggregates it, a visitor's
own click shows on their next page, and the rest catch up within a bound."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from helpers import Browser, WebVisitor, seeded_site
from models import (
    ItemPopularity,
    PendingInteraction,
    Procedure,
    ProcedureCovisitation,
    UserCategoryAffinity,
    UserInteraction,
    db,
)
from personalization.events import Interaction, ItemKey, VisitorInteraction

# What README promises: a logged interaction is in the statistics this soon.
CATCH_UP_SECONDS = 5


def system_of(app):
    return app.extensions["personalization"]


def deferred(app):
    """The app's system with no inline aggregation: rows wait, as they do for
    a server's background aggregator."""
    system = system_of(app)
    system.aggregate_inline = False
    return system


def procedures(app) -> list[tuple[int, int]]:
    """(procedure id, category id) of the catalog, in id order."""
    with app.app_context():
        return db.session.execute(
            select(Procedure.id, Procedure.category_id).order_by(Procedure.id)
        ).all()


def count(app, model, *where) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model).where(*where))


def statistics(app) -> dict:
    """Every popularity and co-visitation row and affinity, comparable."""
    with app.app_context():
        session = db.session
        return {
            "popularity": {
                (kind, item): (round(score, 4), visitors)
                for kind, item, score, visitors in session.execute(
                    select(
                        ItemPopularity.target_type,
                        ItemPopularity.target_id,
                        ItemPopularity.score,
                        ItemPopularity.visitors,
                    )
                )
            },
            "covisitation": set(
                session.execute(
                    select(
                        ProcedureCovisitation.procedure_id,
                        ProcedureCovisitation.other_id,
                        ProcedureCovisitation.visitors,
                    )
                ).all()
            ),
            "affinity": {
                (user, category)
                for user, category in session.execute(
                    select(
                        UserCategoryAffinity.user_id, UserCategoryAffinity.category_id
                    )
                )
            },
        }


def statistics_inline(app, entries: list[VisitorInteraction]) -> dict:
    """The statistics these entries make when aggregated as they are recorded;
    the log and statistics are emptied again afterwards."""
    with app.app_context():
        system_of(app).record(entries)
    made = statistics(app)
    with app.app_context():
        for model in (ItemPopularity, ProcedureCovisitation, UserCategoryAffinity):
            db.session.query(model).delete()
        db.session.query(UserInteraction).delete()
        db.session.commit()
    return made


def clicks(app, visitors: int, per_visitor: int) -> list[VisitorInteraction]:
    """Each visitor clicks procedures in a stride of their own, one repeated."""
    ids = [pid for pid, _ in procedures(app)]
    entries = []
    for v in range(visitors):
        visitor = f"{v:032x}"
        for n in range(per_visitor):
            pid = ids[(v * 3 + n * 7) % len(ids)]
            entries.append(
                VisitorInteraction(
                    visitor, "s", Interaction("click", ItemKey("procedure", pid))
                )
            )
        entries.append(entries[-1])  # a repeat: its visitor counts once
    return entries


def test_requests_only_append_and_the_aggregator_folds_in(catalog):
    system = deferred(catalog)
    with catalog.app_context():
        system.record(clicks(catalog, 3, 4))
        system.record_interactions("p" * 32, "s", [Interaction("view", None)])
    # The bare page view changes no statistic: it goes to the log directly.
    assert count(catalog, UserInteraction) == 1
    assert count(catalog, PendingInteraction) == 3 * 5
    assert count(catalog, ItemPopularity) == 0
    assert count(catalog, UserCategoryAffinity) == 0
    with catalog.app_context():
        assert system.aggregate() == 3 * 5
        assert system.aggregate() == 0
    assert count(catalog, PendingInteraction) == 0
    assert count(catalog, UserInteraction) == 3 * 5 + 1
    assert count(catalog, ItemPopularity) > 0
    assert count(catalog, UserCategoryAffinity) > 0


def test_aggregating_in_batches_equals_aggregating_inline(database_url, catalog):
    """Deferred, in batches of 7 rows, the statistics come out as the inline
    path leaves them: first visits counted once, pairs once per visitor."""
    from app import create_app
    from helpers import app_config

    entries = clicks(catalog, 12, 6)
    inline = statistics_inline(catalog, entries)

    batched = create_app(app_config(database_url, AGGREGATION_BATCH=7))
    system = deferred(batched)
    with batched.app_context():
        system.record(entries)
        assert system.aggregate() == len(entries)
    assert statistics(batched) == inline


def test_two_aggregators_at_once_count_each_row_once(database_url, catalog):
    from app import create_app
    from helpers import app_config

    entries = clicks(catalog, 40, 5)
    expected = statistics_inline(catalog, entries)

    apps = [create_app(app_config(database_url, AGGREGATION_BATCH=9)) for _ in range(2)]
    with apps[0].app_context():
        deferred(apps[0]).record(entries)
    folded = []
    barrier = threading.Barrier(2)

    def aggregate(app) -> None:
        with app.app_context():
            barrier.wait()
            folded.append(system_of(app).aggregate())

    threads = [threading.Thread(target=aggregate, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(folded) == len(entries)
    assert statistics(catalog) == expected


def test_a_failing_aggregation_keeps_the_rows_for_the_next_run(catalog, monkeypatch):
    system = system_of(catalog)  # inline: aggregates right after the commit

    def fail(*args, **kwargs):
        from sqlalchemy.exc import OperationalError

        raise OperationalError("UPSERT", {}, Exception("connection lost"))

    monkeypatch.setattr(system.popularity, "add", fail)
    with catalog.app_context():
        assert system.record(clicks(catalog, 2, 2)) == 6  # stored, answered
    assert count(catalog, PendingInteraction) == 6
    assert count(catalog, UserCategoryAffinity) == 0  # the batch rolled back whole
    monkeypatch.undo()
    with catalog.app_context():
        assert system.aggregate() == 6
    assert count(catalog, PendingInteraction) == 0
    assert count(catalog, UserCategoryAffinity) > 0


def test_an_erased_visitor_is_never_aggregated(catalog):
    system = deferred(catalog)
    with catalog.app_context():
        system.record(clicks(catalog, 2, 3))
        forgotten = f"{0:032x}"
        system.forget_visitor(forgotten)
        system.aggregate()
    assert (
        count(catalog, UserCategoryAffinity, UserCategoryAffinity.user_id == forgotten)
        == 0
    )
    assert count(catalog, UserCategoryAffinity) > 0  # the other visitor's


def test_rows_stored_after_their_visitors_erasure_are_dropped(catalog):
    """A request in flight during "forget me" commits its rows after it: the
    aggregator drops them (erased_visitors) instead of counting them."""
    system = deferred(catalog)
    forgotten = f"{0:032x}"
    with catalog.app_context():
        system.forget_visitor(forgotten)
        system.record(clicks(catalog, 2, 3))  # visitor 0's, and visitor 1's
        assert system.aggregate() == 8  # 4 each, one a repeat
    for model in (UserInteraction, UserCategoryAffinity, PendingInteraction):
        assert count(catalog, model, model.user_id == forgotten) == 0
    assert count(catalog, UserInteraction) == 4  # the other visitor's
    assert count(catalog, UserCategoryAffinity) > 0


def test_refresh_counts_waiting_rows_once(catalog):
    system = deferred(catalog)
    with catalog.app_context():
        system.record(clicks(catalog, 6, 3))
        system.refresh_statistics()
        rebuilt = statistics(catalog)["popularity"]
        assert system.aggregate() == 0  # refresh aggregated what waited first
        system.refresh_statistics()
    assert statistics(catalog)["popularity"] == rebuilt


def test_one_visitor_aggregated_ahead_counts_the_same(database_url, catalog):
    """A page aggregates its own visitor's waiting rows only (read your
    writes); taking them out of arrival order, in batches of 2, changes no
    statistic, and the other visitors' rows wait for the aggregator."""
    from app import create_app
    from helpers import app_config

    entries = clicks(catalog, 4, 5)
    inline = statistics_inline(catalog, entries)

    batched = create_app(app_config(database_url, AGGREGATION_BATCH=2))
    system = deferred(batched)
    ahead = f"{2:032x}"
    theirs = sum(entry.visitor_id == ahead for entry in entries)
    with batched.app_context():
        system.record(entries)
        assert system.aggregate(ahead) == theirs
        assert system.aggregate(ahead) == 0
    assert count(batched, PendingInteraction) == len(entries) - theirs
    assert count(batched, PendingInteraction, PendingInteraction.user_id == ahead) == 0
    assert count(batched, UserInteraction) == theirs
    with batched.app_context():
        assert system.aggregate() == len(entries) - theirs
    assert statistics(batched) == inline


def test_own_click_shows_on_the_next_page_before_any_aggregation(catalog):
    """Read your writes: with the aggregator far off, the next page aggregates
    the visitor's own waiting rows before it ranks, and only theirs."""
    system = deferred(catalog)
    others = clicks(catalog, 2, 3)
    with catalog.app_context():
        system.record(others)
    procedure_id, category_id = procedures(catalog)[-1]
    browser = Browser(catalog)
    assert browser.track(click(procedure_id)).status_code == 202
    assert count(catalog, PendingInteraction) == len(others) + 1
    listed = browser.get("/personalization/recommendations/categories").get_json()
    assert listed["items"][0]["id"] == category_id
    assert listed["items"][0]["reason"] == "affinity"
    assert count(catalog, PendingInteraction) == len(others)  # theirs wait
    with catalog.app_context():
        name = db.session.get(Procedure, procedure_id).name
    assert name in browser.get("/").get_data(as_text=True)


def test_a_new_click_changes_the_kept_profile(catalog):
    """The profile a process keeps between pages follows the visitor's latest
    interaction: their new interest is in the very next ranking."""
    (first, first_category), *_, (last, last_category) = procedures(catalog)
    assert first_category != last_category
    browser = Browser(catalog)
    # A click (0.3), then two consultation requests (2 x 0.5) elsewhere.
    for procedure_id, category_id, kind, times in (
        (first, first_category, "click", 1),
        (last, last_category, "form_submit", 2),
    ):
        for _ in range(times):
            browser.track({**click(procedure_id), "interaction_type": kind})
        listed = browser.get("/personalization/recommendations/categories")
        assert listed.get_json()["items"][0]["id"] == category_id


def test_a_search_changes_the_kept_profile(catalog):
    """A search names no item, but raises its results' categories: the profile
    a process keeps between pages follows it too, on the very next page."""
    (first, _), *_, (last, last_category) = procedures(catalog)
    with catalog.app_context():
        query = db.session.get(Procedure, last).name
    browser = Browser(catalog)
    browser.track(click(first))

    def reasons() -> dict[int, str]:
        listed = browser.get("/personalization/recommendations/categories?limit=20")
        return {item["id"]: item["reason"] for item in listed.get_json()["items"]}

    assert reasons().get(last_category) != "affinity"
    searched = browser.track(
        {
            "interaction_type": "search",
            "target_type": "page",
            "metadata": {"query": query},
        }
    )
    assert searched.status_code == 202
    assert reasons()[last_category] == "affinity"


# The real site under gunicorn


def visitor_ids(app) -> set[str]:
    with app.app_context():
        return set(db.session.scalars(select(UserInteraction.user_id).distinct()))


def clicked_procedures(visitor: WebVisitor) -> list[int]:
    answer = visitor.get("/personalization/recommendations/procedures?limit=5")
    return [item["id"] for item in answer.json()["items"]]


def click(procedure_id: int) -> dict:
    return {
        "interaction_type": "click",
        "target_type": "procedure",
        "target_id": procedure_id,
    }


def kill_minus_9(site) -> None:
    """SIGKILL the gunicorn master and its workers: no shutdown, no flush."""
    master = site.process.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    for pid in [*map(int, children), master]:
        os.kill(pid, signal.SIGKILL)
    site.process.wait(timeout=10)


@pytest.mark.serial
def test_accepted_events_survive_kill_9_and_are_aggregated_after(app, database_url):
    """Every 202 is durable: the server dies by SIGKILL right after answering,
    before any aggregation ran; every accepted event is in the inbox, and the
    next aggregation logs and counts each once."""
    with seeded_site(
        database_url, workers=2, AGGREGATION_INTERVAL_SECONDS="60"
    ) as site:
        visitor = WebVisitor(site.url)
        ids = clicked_procedures(visitor)
        accepted = 0
        for procedure_id in ids:
            answer = visitor.track(click(procedure_id), click(procedure_id))
            assert answer.status_code == 202
            accepted += answer.json()["accepted"]
        kill_minus_9(site)
    clicks_logged = UserInteraction.interaction_type == "click"
    assert count(app, PendingInteraction) == accepted  # all in the inbox
    assert count(app, UserInteraction, clicks_logged) == 0
    with app.app_context():
        assert system_of(app).aggregate() == accepted
    assert count(app, UserInteraction, clicks_logged) == accepted
    assert count(app, PendingInteraction) == 0
    with app.app_context():
        [visitor_id] = visitor_ids(app) - {None}
        popularity = dict(
            db.session.execute(
                select(ItemPopularity.target_id, ItemPopularity.visitors).where(
                    ItemPopularity.target_type == "procedure"
                )
            ).all()
        )
        assert popularity == {pid: 1 for pid in ids}  # one visitor each, once
        assert (
            count(app, UserCategoryAffinity, UserCategoryAffinity.user_id == visitor_id)
            > 0
        )


@pytest.mark.serial
def test_statistics_catch_up_within_the_stated_bound(app, database_url):
    with seeded_site(database_url, workers=2) as site:  # the default interval
        visitor = WebVisitor(site.url)
        ids = clicked_procedures(visitor)
        sent = time.monotonic()
        assert visitor.track(*[click(pid) for pid in ids]).status_code == 202
        while count(app, PendingInteraction) and time.monotonic() - sent < 30:
            time.sleep(0.1)
        caught_up = time.monotonic() - sent
        assert "Traceback" not in site.output()
    assert count(app, PendingInteraction) == 0
    assert caught_up < CATCH_UP_SECONDS
    with app.app_context():
        assert count(
            app, ItemPopularity, ItemPopularity.target_type == "procedure"
        ) == len(ids)


def test_catch_up_bound_is_the_one_readme_states():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"within {CATCH_UP_SECONDS} seconds" in readme


def test_aggregate_command_folds_what_waits(runner, catalog):
    system = deferred(catalog)
    with catalog.app_context():
        system.record(clicks(catalog, 2, 2))
    result = runner.invoke(args=["personalization", "aggregate"])
    assert result.exit_code == 0, result.output
    assert "Aggregated 6 interactions" in result.output
    assert count(catalog, PendingInteraction) == 0
