"""Simulated demo traffic for `flask seed-demo`: a few hundred visitors browsing the
demo catalog over the past weeks, in both arms of the experiment, so a fresh
database has charts, an experiment report and an offline evaluation to show.

Every figure this traffic leads to is simulated, not measured. Visitors favour one
or two categories and click what matches them more often; the personalized arm's
lists favour what a visitor already looked at, so they get more clicks than the
control arm's popular lists. The rows are the ones the site writes, and the
statistics rankings read come from the engine's own ingest path; none of it is
streamed to AWS Personalize.
"""

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import insert, select

from models import (
    Category,
    ConsultationRequest,
    Doctor,
    ExperimentAssignment,
    Package,
    Procedure,
    RecommendationImpression,
    RejectedEventCount,
    UserInteraction,
    VisitorPreference,
    doctor_procedures,
    package_procedures,
    utcnow,
)
from personalization.consultations import REFERENCE_ALPHABET, REFERENCE_LENGTH
from personalization.events import (
    INTERACTION_TYPES,
    Interaction,
    ItemKey,
    VisitorInteraction,
)
from personalization.experiment import CONTROL, EXPERIMENT, arm_for
from personalization.identity import VISITOR_ID_LENGTH

DEFAULT_SEED = 2026
DEFAULT_VISITORS = 300
DEFAULT_DAYS = 30
LIST_SIZE = 6
ENGINE, FALLBACK = "engine", "fallback"
# The tracker reports engaged time only where the vocabulary has it.
ENGAGED = "engaged" in INTERACTION_TYPES
# Sessions per visitor (1 to 5) and how likely each count is: most never return.
SESSION_COUNTS = (1, 2, 3, 4, 5)
SESSION_COUNT_WEIGHTS = (50, 22, 13, 8, 7)
# Share of visitors who pick a city on /doctors (stored: visitor_preferences).
CITY_CHOOSERS = 0.35
# Click probability of a recommended card at position 1, for a visitor who
# favours its category and for one who does not; later positions get less.
CLICK_IF_FAVOURED = 0.18
CLICK_OTHERWISE = 0.005
# How much of that a list gets where it sits on its page ("similar procedures"
# come after the procedure and its doctors; the home page's lists are the page).
LIST_ATTENTION = {"procedure:similar": 0.5}
# Chance a home page view dismisses one card of a category the visitor ignores.
DISMISS_PER_HOME_VIEW = 0.06
# Chance a session ends in a consultation request, and how much a click on a
# recommendation in that session multiplies it.
CONSULT_PER_SESSION = 0.015
CONSULT_AFTER_RECOMMENDATION = 2.5
# Chance a session goes back to the home page after browsing (its lists have
# learnt from what was just viewed), and the most item pages a session opens.
BACK_HOME = 0.5
PAGES_PER_SESSION = 10
# Hours of the day visits start at, and their weights (evenings busiest).
HOURS = tuple(range(7, 24))
HOUR_WEIGHTS = (1, 2, 3, 3, 3, 4, 4, 3, 3, 3, 4, 5, 6, 6, 5, 3, 2)


@dataclass
class DemoCatalog:
    """The catalog as the simulation needs it: ids, slugs, names and links."""

    categories: list[int]
    slugs: dict[ItemKey, str]
    names: dict[ItemKey, str]
    # category -> its procedures, in id order
    procedures: dict[int, list[int]]
    procedure_category: dict[int, int]
    # procedure -> the doctors who perform it / packages that include it
    doctors_of: dict[int, list[int]]
    packages_of: dict[int, list[int]]
    doctor_city: dict[int, str]
    doctor_categories: dict[int, set[int]]
    package_categories: dict[int, set[int]]
    package_doctor: dict[int, int]


def load_catalog(session) -> DemoCatalog | None:
    """Read the catalog; None when it has no procedures to visit."""
    procedures = session.execute(
        select(
            Procedure.id, Procedure.category_id, Procedure.slug, Procedure.name
        ).order_by(Procedure.id)
    ).all()
    if not procedures:
        return None
    slugs: dict[ItemKey, str] = {}
    names: dict[ItemKey, str] = {}
    by_category: dict[int, list[int]] = defaultdict(list)
    for pid, cid, slug, name in procedures:
        by_category[cid].append(pid)
        slugs[ItemKey("procedure", pid)] = slug
        names[ItemKey("procedure", pid)] = name
    for cid, slug, name in session.execute(
        select(Category.id, Category.slug, Category.name).order_by(Category.id)
    ):
        slugs[ItemKey("category", cid)] = slug
        names[ItemKey("category", cid)] = name
    doctor_city = {}
    for did, slug, city in session.execute(
        select(Doctor.id, Doctor.slug, Doctor.city).order_by(Doctor.id)
    ):
        slugs[ItemKey("doctor", did)] = slug
        doctor_city[did] = city
    package_doctor = {}
    for pkg, slug, did in session.execute(
        select(Package.id, Package.slug, Package.doctor_id).order_by(Package.id)
    ):
        slugs[ItemKey("package", pkg)] = slug
        package_doctor[pkg] = did
    category_of = {pid: cid for pid, cid, _, _ in procedures}
    doctors_of, doctor_categories = links(
        session.execute(select(doctor_procedures)).all(), category_of
    )
    packages_of, package_categories = links(
        session.execute(select(package_procedures)).all(), category_of
    )
    return DemoCatalog(
        categories=sorted(by_category),
        slugs=slugs,
        names=names,
        procedures=dict(by_category),
        procedure_category=category_of,
        doctors_of=doctors_of,
        packages_of=packages_of,
        doctor_city=doctor_city,
        # A doctor's specialty: the category most of their procedures are in.
        doctor_categories={
            did: {counts.most_common(1)[0][0]}
            for did, counts in doctor_categories.items()
        },
        package_categories={
            pkg: set(counts) for pkg, counts in package_categories.items()
        },
        package_doctor=package_doctor,
    )


def links(pairs, category_of: dict[int, int]):
    """From (owner, procedure) pairs: each procedure's owners, and how many of
    each owner's procedures are in each category."""
    owners: dict[int, list[int]] = defaultdict(list)
    categories: dict[int, Counter] = defaultdict(Counter)
    for owner, procedure in sorted(pairs):
        owners[procedure].append(owner)
        categories[owner][category_of[procedure]] += 1
    return dict(owners), dict(categories)


@dataclass
class Traffic:
    """What the simulation produced: the rows the site would have written."""

    visitors: list[str] = field(default_factory=list)
    interactions: list[VisitorInteraction] = field(default_factory=list)
    impressions: list[dict] = field(default_factory=list)
    assignments: list[dict] = field(default_factory=list)
    preferences: list[dict] = field(default_factory=list)
    consultations: list[dict] = field(default_factory=list)


@dataclass
class Visitor:
    number: int
    id: str
    arm: str
    favourites: list[int]
    city: str
    chose_city: bool
    # What the engine would know: categories interacted with, items seen.
    interest: Counter = field(default_factory=Counter)
    seen: set = field(default_factory=set)
    dismissed: set = field(default_factory=set)
    requested: bool = False


class Simulation:
    """Deterministic for a catalog, seed, `now` and control share."""

    def __init__(
        self,
        catalog: DemoCatalog,
        now: datetime,
        days: int,
        seed: int,
        control_share: float,
    ):
        self.catalog = catalog
        self.now = now
        self.days = days
        self.rng = random.Random(seed)
        self.control_share = control_share
        self.traffic = Traffic()
        self.category_weight = {
            cid: 1 / (1 + 0.35 * rank) for rank, cid in enumerate(catalog.categories)
        }
        # What interests everyone, and so what "popular" converges to.
        self.weight: dict[ItemKey, float] = {}
        for cid, pids in catalog.procedures.items():
            for rank, pid in enumerate(pids):
                self.weight[ItemKey("procedure", pid)] = (
                    self.category_weight[cid] / (1 + rank) ** 0.8
                )
        for kind, owners in (
            ("doctor", catalog.doctors_of),
            ("package", catalog.packages_of),
        ):
            for pid, ids in owners.items():
                for owner in ids:
                    key = ItemKey(kind, owner)
                    share = self.weight[ItemKey("procedure", pid)]
                    self.weight[key] = self.weight.get(key, 0.0) + share
        for cid, weight in self.category_weight.items():
            self.weight[ItemKey("category", cid)] = weight
        self.popular = {
            kind: sorted(
                (key for key in self.weight if key.kind == kind),
                key=lambda key: (-self.weight[key], key.id),
            )
            for kind in ("procedure", "doctor", "package", "category")
        }
        self.cities = sorted(set(catalog.doctor_city.values()))

    # Identifiers, drawn from the seeded generator so a seed repeats exactly

    def hex_id(self, digits: int) -> str:
        return f"{self.rng.getrandbits(digits * 4):0{digits}x}"

    def reference(self) -> str:
        chars = "".join(self.rng.choices(REFERENCE_ALPHABET, k=REFERENCE_LENGTH))
        return f"{chars[:4]}-{chars[4:]}"

    # The simulation

    def run(self, visitors: int) -> Traffic:
        for number in range(1, visitors + 1):
            self.visit(self.new_visitor(number))
        self.traffic.interactions.sort(key=lambda e: e.interaction.occurred_at)
        return self.traffic

    def new_visitor(self, number: int) -> Visitor:
        visitor_id = self.hex_id(VISITOR_ID_LENGTH)
        weights = [self.category_weight[c] for c in self.catalog.categories]
        favourites = [self.rng.choices(self.catalog.categories, weights)[0]]
        if self.rng.random() < 0.4 and len(self.catalog.categories) > 1:
            others = [c for c in self.catalog.categories if c != favourites[0]]
            favourites.append(self.rng.choice(others))
        return Visitor(
            number,
            visitor_id,
            arm_for(visitor_id, self.control_share),
            favourites,
            self.rng.choice(self.cities) if self.cities else "",
            bool(self.cities) and self.rng.random() < CITY_CHOOSERS,
        )

    def visit(self, visitor: Visitor) -> None:
        """All of a visitor's sessions: the first in the window, returns later."""
        first_day = self.now - timedelta(days=self.days)
        start = self.session_start(first_day + timedelta(hours=2), self.days - 1)
        if start is None:  # too close to now: they came a few hours earlier
            start = self.now - timedelta(hours=2, minutes=self.rng.randint(1, 180))
        self.traffic.visitors.append(visitor.id)
        self.traffic.assignments.append(
            {
                "experiment": EXPERIMENT,
                "user_id": visitor.id,
                "arm": visitor.arm,
                "control_share": self.control_share,
                "assigned_at": start,
            }
        )
        sessions = self.rng.choices(SESSION_COUNTS, SESSION_COUNT_WEIGHTS)[0]
        for index in range(sessions):
            self.session(visitor, start, first=index == 0)
            gap = (
                self.rng.uniform(0.5, 4)
                if self.rng.random() < 0.5
                else self.rng.uniform(5, 16)
            )
            start = self.session_start(start + timedelta(days=gap), 0)
            if start is None:
                return

    def session_start(self, day: datetime, spread_days: int) -> datetime | None:
        """A start time on `day` or up to `spread_days` after it, at a believable
        hour; None when it would fall in the last two hours before now."""
        day = day.replace(hour=0, minute=0, second=0, microsecond=0)
        moment = day + timedelta(
            days=self.rng.randint(0, max(0, spread_days)),
            hours=self.rng.choices(HOURS, HOUR_WEIGHTS)[0],
            minutes=self.rng.randint(0, 59),
            seconds=self.rng.randint(0, 59),
        )
        earliest = self.now - timedelta(days=self.days) + timedelta(hours=1)
        if moment < earliest:
            moment = earliest + timedelta(minutes=self.rng.randint(0, 120))
        return moment if moment <= self.now - timedelta(hours=2) else None

    def session(self, visitor: Visitor, start: datetime, first: bool) -> None:
        """One visit: home, a search perhaps, a category, its procedures, their
        doctors, a package now and then, and maybe a consultation request."""
        tab = Tab(self, visitor, start, self.hex_id(32))
        to_visit: list[ItemKey] = []
        if first or self.rng.random() < 0.8:
            to_visit += tab.home()
        if self.rng.random() < 0.3:
            to_visit += tab.search(self.pick_procedure(visitor))
        if first and visitor.chose_city:
            tab.choose_city()
        if not to_visit or self.rng.random() < 0.5:
            category = ItemKey("category", self.rng.choice(visitor.favourites))
            tab.page(category)
            favoured = self.catalog.procedures[category.id]
            for pid in self.rng.sample(favoured, k=min(len(favoured), 2)):
                if self.rng.random() < 0.7:
                    procedure = ItemKey("procedure", pid)
                    to_visit.append(tab.card(procedure, tab.path(category)))
        listed = self.rng.randint(0, 2)
        if listed:
            tab.view(None, "/procedures")
            for _ in range(listed):
                to_visit.append(tab.card(self.pick_procedure(visitor), "/procedures"))
            tab.leave(None, "/procedures")
        seen_now: list[ItemKey] = []
        self.browse(tab, to_visit, seen_now)
        if seen_now and self.rng.random() < BACK_HOME and tab.has_time():
            self.browse(tab, tab.home(), seen_now)
        if seen_now and not visitor.requested:
            chance = CONSULT_PER_SESSION * (
                CONSULT_AFTER_RECOMMENDATION if tab.clicked_recommendation else 1
            )
            if self.rng.random() < chance:
                tab.request_consultation(seen_now[-1])

    def browse(self, tab: "Tab", to_visit: list[ItemKey], seen_now: list) -> None:
        """Open the pages in turn, and what each leads to, up to a session's fill."""
        while to_visit and len(seen_now) < PAGES_PER_SESSION and tab.has_time():
            item = to_visit.pop(0)
            if item not in seen_now:
                seen_now.append(item)
                to_visit += tab.page(item)

    def pick_procedure(self, visitor: Visitor) -> ItemKey:
        """A procedure the visitor looks for: mostly of a favourite category."""
        if self.rng.random() < 0.85:
            pids = [
                pid
                for cid in visitor.favourites
                for pid in self.catalog.procedures[cid]
            ]
        else:
            pids = [
                pid
                for cid in self.catalog.categories
                for pid in self.catalog.procedures[cid]
            ]
        keys = [ItemKey("procedure", pid) for pid in pids]
        return self.rng.choices(keys, [self.weight[k] for k in keys])[0]

    def categories_of(self, item: ItemKey) -> set[int]:
        catalog = self.catalog
        if item.kind == "procedure":
            return {catalog.procedure_category[item.id]}
        if item.kind == "doctor":
            return catalog.doctor_categories.get(item.id, set())
        if item.kind == "package":
            return catalog.package_categories.get(item.id, set())
        return {item.id}

    def ranked(self, visitor: Visitor, kind: str, around: ItemKey | None = None):
        """A list as the visitor's arm shows it: [(item, source), ...].

        Control: the popular order. Personalized: items of the categories the
        visitor has shown interest in first (unseen ones, as the engine excludes
        what was seen), then popular ones to fill the list. `around`: similar
        procedures of a procedure page, the same for both arms, as on the site.
        """
        excluded = visitor.dismissed
        if around is not None:
            cid = self.catalog.procedure_category[around.id]
            mine = [ItemKey("procedure", p) for p in self.catalog.procedures[cid]]
            mine = [k for k in mine if k != around and k not in excluded]
            picked = [(k, ENGINE) for k in mine[:LIST_SIZE]]
            return self.fill(picked, kind, excluded | {around})
        if visitor.arm == CONTROL:
            return self.fill([], kind, excluded)
        liked = [cid for cid, n in visitor.interest.most_common(3) if n > 0]
        mine = [
            key
            for key in self.popular[kind]
            if key not in excluded
            and (kind == "category" or key not in visitor.seen)
            and self.categories_of(key) & set(liked)
        ]
        mine.sort(
            key=lambda key: min(
                liked.index(c) for c in self.categories_of(key) if c in liked
            )
        )
        if kind == "doctor" and visitor.chose_city:
            mine.sort(key=lambda key: self.catalog.doctor_city[key.id] != visitor.city)
        return self.fill([(key, ENGINE) for key in mine[:LIST_SIZE]], kind, excluded)

    def fill(self, picked: list, kind: str, excluded: set) -> list:
        """Fill a list from the popular order, as the engine's fallback does."""
        have = {key for key, _ in picked} | excluded
        for key in self.popular[kind]:
            if len(picked) >= LIST_SIZE:
                break
            if key not in have:
                picked.append((key, FALLBACK))
        return picked

    def clicks(self, visitor: Visitor, shown: list, attention: float) -> list[int]:
        """The positions (1-based) of the cards the visitor clicks in a list."""
        clicked = []
        for position, (key, _) in enumerate(shown, start=1):
            favoured = self.categories_of(key) & set(visitor.favourites)
            chance = attention * (CLICK_IF_FAVOURED if favoured else CLICK_OTHERWISE)
            if self.rng.random() < chance / (1 + 0.15 * (position - 1)):
                clicked.append(position)
        return clicked


class Tab:
    """One session's browsing: a clock that moves on, and the rows it leaves."""

    def __init__(self, sim: Simulation, visitor: Visitor, start: datetime, sid: str):
        self.sim = sim
        self.rng = sim.rng
        self.visitor = visitor
        self.clock = start
        self.session_id = sid
        self.clicked_recommendation = False

    def has_time(self) -> bool:
        """Whether another page still ends before now (sessions start 2 hours
        before it at the latest)."""
        return self.clock < self.sim.now - timedelta(minutes=30)

    def event(self, kind: str, item: ItemKey | None, metadata: dict | None) -> None:
        self.sim.traffic.interactions.append(
            VisitorInteraction(
                self.visitor.id,
                self.session_id,
                # Never streamed: made-up visitors must not train a real model.
                Interaction(kind, item, metadata, occurred_at=self.clock, stream=False),
            )
        )
        if item is not None and kind != "engaged":
            self.visitor.seen.add(item)
            categories = self.sim.categories_of(item)
            sign = -1 if kind == "not_interested" else 1
            for cid in categories:
                self.visitor.interest[cid] += sign / len(categories)

    def wait(self, low: int, high: int) -> None:
        self.clock += timedelta(seconds=self.rng.randint(low, high))

    def path(self, item: ItemKey | None) -> str:
        if item is None:
            return "/"
        folder = "categories" if item.kind == "category" else f"{item.kind}s"
        return f"/{folder}/{self.sim.catalog.slugs[item]}"

    def view(self, item: ItemKey | None, path: str | None = None) -> None:
        """A page view as the site logs it, then the time spent on it."""
        self.event("view", item, None if item else {"path": path or "/"})
        self.wait(8, 30)

    def leave(self, item: ItemKey | None, path: str) -> None:
        """The tracker's engaged time as the page is left."""
        seconds = min(900, max(2, int(self.rng.lognormvariate(3.3, 0.8))))
        self.clock += timedelta(seconds=seconds)
        if ENGAGED:
            self.event("engaged", item, {"seconds": seconds, "path": path})
        self.wait(1, 4)

    def show(self, name: str, kind: str, shown: list, request_id: str) -> str:
        list_id = self.sim.hex_id(16)
        self.sim.traffic.impressions.append(
            {
                "id": list_id,
                "user_id": self.visitor.id,
                "request_id": request_id,
                "list_name": name,
                "item_kind": kind,
                "items": json.dumps(
                    [[key.id, source] for key, source in shown], separators=(",", ":")
                ),
                "item_count": len(shown),
                "arm": self.visitor.arm,
                "shown_at": self.clock,
            }
        )
        return list_id

    def recommended(self, page: str, lists: dict[str, list]) -> list[ItemKey]:
        """Show a page's lists; click some cards; return the items to open."""
        request_id = self.sim.hex_id(32)
        ids = {
            name: self.show(name, shown[0][0].kind, shown, request_id)
            for name, shown in lists.items()
            if shown
        }
        opened = []
        for name, list_id in ids.items():
            shown = lists[name]
            attention = LIST_ATTENTION.get(name, 1.0)
            for position in self.sim.clicks(self.visitor, shown, attention):
                item = shown[position - 1][0]
                self.wait(3, 40)
                metadata = {"path": page, "list_id": list_id, "position": position}
                self.event("click", item, metadata)
                self.clicked_recommendation = True
                opened.append(item)
        if self.rng.random() < DISMISS_PER_HOME_VIEW and name_of_home(lists):
            self.dismiss(ids, lists)
        return opened

    def dismiss(self, ids: dict[str, str], lists: dict[str, list]) -> None:
        """ "Not interested" on a card of a category the visitor does not favour."""
        favourites = set(self.visitor.favourites)
        candidates = [
            (name, position, key)
            for name, shown in lists.items()
            if name in ids and name != "home:category"
            for position, (key, _) in enumerate(shown, start=1)
            if not self.sim.categories_of(key) & favourites
        ]
        if not candidates:
            return
        name, position, key = self.rng.choice(candidates)
        self.wait(2, 20)
        metadata = {"list_id": ids[name], "position": position}
        self.event("not_interested", key, metadata)
        self.visitor.dismissed.add(key)

    def home(self) -> list[ItemKey]:
        self.view(None, "/")
        lists = {
            f"home:{kind}": self.sim.ranked(self.visitor, kind)
            for kind in ("procedure", "doctor", "category")
        }
        opened = self.recommended("/", lists)
        self.leave(None, "/")
        return opened

    def search(self, looked_for: ItemKey) -> list[ItemKey]:
        name = self.sim.catalog.names[looked_for]
        words = name.split()
        query = self.rng.choice([name, name.lower(), words[0].lower()])
        self.event("search", None, {"query": query, "path": "/"})
        self.wait(1, 3)
        self.view(None, "/search")
        self.leave(None, "/search")
        return [self.card(looked_for, "/search")] if self.rng.random() < 0.8 else []

    def choose_city(self) -> None:
        self.view(None, "/doctors")
        self.sim.traffic.preferences.append(
            {
                "user_id": self.visitor.id,
                "city": self.visitor.city,
                "updated_at": self.clock,
            }
        )
        self.leave(None, "/doctors")

    def card(self, item: ItemKey, page: str) -> ItemKey:
        """A click on a plain catalog card (not a recommendation) to open it."""
        self.wait(2, 15)
        self.event("click", item, {"path": page})
        return item

    def page(self, item: ItemKey) -> list[ItemKey]:
        """An item's page: its view, what it shows and what the visitor opens."""
        path = self.path(item)
        self.view(item)
        opened: list[ItemKey] = []
        catalog = self.sim.catalog
        if item.kind == "procedure":
            similar = self.sim.ranked(self.visitor, "procedure", around=item)
            opened += self.recommended(path, {"procedure:similar": similar})
            doctors = catalog.doctors_of.get(item.id, [])
            if self.visitor.chose_city:
                near = [
                    d for d in doctors if catalog.doctor_city[d] == self.visitor.city
                ]
                doctors = near or doctors
            for did in self.rng.sample(
                doctors, k=min(len(doctors), self.rng.choice((0, 1, 1, 2)))
            ):
                opened.append(self.card(ItemKey("doctor", did), path))
            packages = catalog.packages_of.get(item.id, [])
            if packages and self.rng.random() < 0.15:
                opened.append(
                    self.card(ItemKey("package", self.rng.choice(packages)), path)
                )
        self.leave(item, path)
        return opened

    def request_consultation(self, subject: ItemKey) -> None:
        """The consultation form sent from the page of `subject`: the request
        row, and the form_submit the site records with it."""
        number = self.visitor.number
        self.wait(30, 180)
        row = {
            "reference": self.sim.reference(),
            "user_id": self.visitor.id,
            "doctor_id": None,
            "procedure_id": None,
            "package_id": None,
            "name": f"Demo Visitor {number}",
            "email": f"demo.visitor{number}@example.com",
            "phone": None,
            "preferred_date": (
                self.clock + timedelta(days=self.rng.randint(3, 21))
            ).date(),
            "message": "Simulated demo request.",
            "consent_to_contact": True,
            "created_at": self.clock,
        }
        if subject.kind == "package":
            row["package_id"] = subject.id
            row["doctor_id"] = self.sim.catalog.package_doctor[subject.id]
        elif subject.kind == "procedure":
            row["procedure_id"] = subject.id
        elif subject.kind == "doctor":
            row["doctor_id"] = subject.id
        else:
            return  # a category page has no consultation form
        self.sim.traffic.consultations.append(row)
        self.event("form_submit", subject, {"form": "consultation"})
        self.visitor.requested = True


def name_of_home(lists: dict) -> bool:
    return any(name.startswith("home:") for name in lists)


def simulate(
    catalog: DemoCatalog,
    now: datetime,
    visitors: int = DEFAULT_VISITORS,
    days: int = DEFAULT_DAYS,
    seed: int = DEFAULT_SEED,
    control_share: float = 0.1,
) -> Traffic:
    """Simulate `visitors` visitors over the `days` days before `now`."""
    return Simulation(catalog, now, days, seed, control_share).run(visitors)


def has_interactions(session) -> bool:
    """Tell whether anyone (real or simulated) has been recorded yet."""
    return session.scalar(select(UserInteraction.id).limit(1)) is not None


def seed_demo_traffic(
    system,
    visitors: int = DEFAULT_VISITORS,
    days: int = DEFAULT_DAYS,
    seed: int = DEFAULT_SEED,
    now: datetime | None = None,
) -> dict[str, int] | None:
    """Simulate demo traffic on the catalog and store it; None when the catalog
    has no procedures. Return what was stored, by kind.

    Everything goes in one transaction: the experiment assignments, chosen
    cities, impressions and consultation requests are inserted in bulk, then the
    interactions go through the facade's `record`, which updates affinities,
    popularity and co-visitation as the site does, and commits it all.
    """
    session = system.session
    catalog = load_catalog(session)
    if catalog is None:
        return None
    now = now or utcnow()
    traffic = simulate(
        catalog, now, visitors, days, seed, system.settings.experiment_control_share
    )
    unique_references(session, traffic.consultations, seed)
    try:
        for model, rows in (
            (ExperimentAssignment, traffic.assignments),
            (VisitorPreference, traffic.preferences),
            (RecommendationImpression, traffic.impressions),
            (ConsultationRequest, traffic.consultations),
            (RejectedEventCount, simulated_rejections(now, days, seed)),
        ):
            if rows:
                session.execute(insert(model), rows)
    except BaseException:
        session.rollback()
        raise
    system.record(traffic.interactions, now)
    arms = Counter(row["arm"] for row in traffic.assignments)
    return {
        "visitors": len(traffic.visitors),
        "control": arms[CONTROL],
        "events": len(traffic.interactions),
        "impressions": len(traffic.impressions),
        "consultations": len(traffic.consultations),
    }


# Tracker events a month of real traffic gets refused, per day on average, by
# reason: tabs left open on an item since removed, old cached tracker versions,
# scripts poking at the endpoint.
REJECTIONS_PER_DAY = {"unknown_item": 2.0, "bad_metadata": 0.8, "malformed": 0.4}


def simulated_rejections(now: datetime, days: int, seed: int) -> list[dict]:
    """rejected_event_counts rows for the tracker, day by day (the data quality
    page's charts): counts only, as the site keeps them."""
    rng = random.Random(seed)
    rows = []
    for back in range(days):
        day = (now - timedelta(days=back)).date()
        for reason, mean in REJECTIONS_PER_DAY.items():
            count = sum(rng.random() < mean / 8 for _ in range(8))
            if count:
                rows.append(
                    {"day": day, "source": "tracker", "reason": reason, "count": count}
                )
    return rows


def unique_references(session, requests: list[dict], seed: int) -> None:
    """Draw another reference for a request whose one is taken (rare)."""
    taken = set(session.scalars(select(ConsultationRequest.reference)))
    rng = random.Random(seed)
    for request in requests:
        while request["reference"] in taken:
            chars = "".join(rng.choices(REFERENCE_ALPHABET, k=REFERENCE_LENGTH))
            request["reference"] = f"{chars[:4]}-{chars[4:]}"
        taken.add(request["reference"])
