"""The offline evaluation's engine: the site's own PersonalizationSystem over a
scratch in-memory database holding a replayed log, so what the evaluation
measures is exactly the code the site runs (commands.py, bench/)."""

from collections.abc import Iterable

from sqlalchemy import StaticPool, create_engine, insert
from sqlalchemy.orm import Session

from models import Base, Category, Procedure, UserInteraction
from personalization import evaluation
from personalization.ingest import log_row
from personalization.recommenders import PersonalizeAdapter
from personalization.settings import Settings
from personalization_system import PersonalizationSystem


def replay_system(
    categories: Iterable[tuple[int, str]],
    procedures: Iterable[tuple[int, int]],
    split: evaluation.Split,
    settings: Settings,
    personalize: PersonalizeAdapter | None = None,
) -> PersonalizationSystem:
    """A system over a scratch in-memory database holding a bare catalog (the
    categories, and procedures with their category) and a split's training log,
    with its statistics rebuilt as of the cutoff and its clock stopped there.

    What the offline evaluation measures is then exactly the code the site runs.
    """
    engine = create_engine(
        "sqlite://",
        poolclass=StaticPool,
        connect_args={"check_same_thread": False},
    )
    Base.metadata.create_all(engine)
    session = Session(engine)
    system = PersonalizationSystem(
        settings,
        session,
        fingerprint_key="offline evaluation",
        personalize=personalize,
        search_categories=lambda query: [],  # the replayed log holds no searches
        clock=lambda: split.cutoff,
    )
    with system.transaction():
        session.execute(
            insert(Category),
            [
                {
                    "id": cid,
                    "name": f"{name} [{cid}]",
                    "slug": f"c{cid}",
                    "description": "",
                }
                for cid, name in categories
            ],
        )
        session.execute(
            insert(Procedure),
            [
                {
                    "id": pid,
                    "name": f"item {pid}",
                    "slug": f"i{pid}",
                    "category_id": cid,
                    "short_description": "",
                    "price_min": 0,
                    "price_max": 0,
                    "recovery_time": "",
                }
                for pid, cid in procedures
            ],
        )
        rows = [log_row(entry, split.cutoff) for entry in split.train]
        for start in range(0, len(rows), 20_000):
            session.execute(insert(UserInteraction), rows[start : start + 20_000])
    system.refresh_statistics(split.cutoff)
    with system.transaction():
        system.affinity.rebuild(split.cutoff)
    return system


def retuned(system: PersonalizationSystem, settings: Settings) -> PersonalizationSystem:
    """The same replayed database and clock ranked with other settings, without
    rebuilding its statistics: for tuning what only ranking reads."""
    return PersonalizationSystem(
        settings,
        system.session,
        fingerprint_key="offline evaluation",
        search_categories=lambda query: [],
        clock=system.clock,
    )
