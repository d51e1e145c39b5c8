"""Site search that forgives: typos, lay terms and "treatment + city", matched
(rapidfuzz) over an in-memory index of the catalog, results grouped by kind."""

import bisect
import functools
import itertools
import logging
import re
import time
import unicodedata
from dataclasses import dataclass, field

from flask import current_app
from rapidfuzz import fuzz, process
from sqlalchemy import bindparam, func, literal, or_, select, union_all

from models import (
    Category,
    Doctor,
    Package,
    Procedure,
    db,
    doctor_procedures,
    package_procedures,
    top_rated_order,
)

log = logging.getLogger(__name__)

MAX_QUERY_LENGTH = 200
MAX_SEARCH_TERMS = 8
RESULTS_PER_TYPE = 20
SUGGESTIONS = 3
# Tokens shorter than this are never corrected ("lip" must not become "lift")
# nor completed as prefixes; four-letter ones need a closer match.
MIN_FUZZY_LENGTH = 4
MAX_FUZZY_LENGTH = 30
CORRECTION_CUTOFF = {4: 85}
DEFAULT_CORRECTION_CUTOFF = 80
SUGGESTION_CUTOFF = 65
# Edits that leave the catalog's counts, highest ids and name lengths alone (a
# description rewritten, a doctor moving city) are picked up within this time.
INDEX_MAX_AGE_SECONDS = 300
# The groups of results, in the order pages show them when they match equally.
KINDS = ("procedures", "doctors", "packages", "categories")

# What visitors call a treatment, by the catalog name it means. Phrases are
# matched as forgivingly as names (typos, plurals, word order).
SYNONYMS = {
    "Botox": [
        "anti-wrinkle injections", "anti-wrinkle", "wrinkle relaxer",
        "wrinkle injections", "botulinum toxin", "neurotoxin", "tox",
        "baby botox", "lip flip", "crow's feet",
    ],
    "Dermal Fillers": ["juvederm", "restylane", "hyaluronic acid filler"],
    "Lip Fillers": [
        "lip injections", "lip augmentation", "lip enhancement", "lip plumping",
    ],
    "Cheek Fillers": ["cheek injections", "cheek augmentation"],
    "Tear Trough Filler": ["under-eye filler", "under eye injections"],
    "Jawline Filler": ["jaw filler", "chin filler", "jawline contouring"],
    "Kybella": ["double chin", "double chin injections", "chin fat"],
    "Sculptra": ["collagen stimulator"],
    "Chemical Peel": ["peel", "acid peel", "vi peel"],
    "Microneedling": ["collagen induction therapy", "dermaroller", "derma roller"],
    "HydraFacial": ["medical facial", "facial"],
    "Morpheus8": ["rf microneedling", "radiofrequency microneedling"],
    "PRP Facial": ["vampire facial", "platelet-rich plasma facial"],
    "Laser Hair Removal": ["hair removal", "laser hair"],
    "IPL Photofacial": ["ipl", "photofacial", "photo facial", "sun spots"],
    "Fraxel Laser": ["fraxel", "fractional laser"],
    "CO2 Laser Resurfacing": ["co2 laser", "laser resurfacing"],
    "Laser Tattoo Removal": ["tattoo removal", "picosure", "pico laser"],
    "Laser Vein Removal": ["spider veins", "vein removal", "thread veins"],
    "CoolSculpting": ["fat freezing", "cryolipolysis", "freeze fat"],
    "Emsculpt NEO": ["emsculpt", "muscle stimulation"],
    "SculpSure": ["laser lipo", "laser fat removal"],
    "Liposuction": ["lipo", "lipo 360", "fat removal", "vaser", "liposculpture"],
    "Tummy Tuck": ["abdominoplasty", "stomach tuck", "belly tuck"],
    "Brazilian Butt Lift": ["bbl", "butt lift", "buttock lift", "butt augmentation"],
    "Arm Lift": ["brachioplasty", "bingo wings"],
    "Thigh Lift": ["thighplasty"],
    "Rhinoplasty": ["nose job", "nose surgery", "nose reshaping", "nose"],
    "Facelift": ["face lift", "rhytidectomy", "mini facelift"],
    "Neck Lift": ["platysmaplasty", "turkey neck"],
    "Blepharoplasty": [
        "eyelid surgery", "eyelid lift", "eye lift", "eye bag removal", "bleph",
        "droopy eyelids", "hooded eyes",
    ],
    "Brow Lift": ["forehead lift", "eyebrow lift"],
    "Chin Implant": ["chin augmentation", "genioplasty"],
    "Otoplasty": ["ear pinning", "ear surgery", "ear reshaping"],
    "Buccal Fat Removal": ["buccal fat", "cheek reduction"],
    "Breast Augmentation": [
        "boob job", "breast implants", "breast enlargement", "boob implants",
    ],
    "Breast Lift": ["boob lift", "mastopexy"],
    "Breast Reduction": ["boob reduction", "reduction mammoplasty"],
    "Breast Implant Removal": ["explant", "implant removal"],
    "Gynecomastia Surgery": ["male breast reduction", "man boobs", "moobs", "gyno"],
    "Fat Transfer Breast Augmentation": ["natural breast augmentation"],
    "Mommy Makeover": ["after pregnancy"],
    "FUE Hair Transplant": ["hair transplant", "fue", "hair implants", "hair plugs"],
    "FUT Hair Transplant": ["fut", "strip hair transplant"],
    "PRP Hair Restoration": ["prp hair", "prp for hair loss"],
    "Scalp Micropigmentation": ["smp", "scalp tattoo"],
    "Low-Level Laser Therapy": ["lllt", "red light therapy", "laser cap"],
    "Eyebrow Transplant": ["brow transplant"],
    "Ultherapy": ["ulthera", "hifu", "ultrasound lift"],
    "Thermage": ["radiofrequency skin tightening"],
    "Thread Lift": ["pdo threads", "threads", "pdo"],
    "Renuvion": ["j-plasma", "jplasma"],
    "Hair Restoration": ["hair loss", "balding", "thinning hair"],
    "Injectables": ["injectable"],
}  # fmt: skip

# Other names of the cities doctors practise in.
CITY_ALIASES = {
    "nyc": "New York",
    "ny": "New York",
    "new york city": "New York",
    "manhattan": "New York",
    "la": "Los Angeles",
}

# Words that say nothing about what is searched for ("botox near me",
# "dr chen", "cost of a tummy tuck"), in their folded form.
STOPWORDS = frozenset(
    "a an and at best by cost dr for in me my near of on or plus price the to "
    "what with".split()
)

WORD = re.compile(r"[^\W_]+")
APOSTROPHES = re.compile(r"['’‘`´]")
QUOTES = ('"', "“", "”", "„", "«", "»")


# Text normalisation


def singular(word: str) -> str:
    """A word's singular, by the plural endings catalog words use."""
    if len(word) <= 3 or not word.isalpha() or word == "series":
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def fold(text: str) -> list[tuple[str, str]]:
    """Split text into (word, term) pairs: the word lower case without accents
    or punctuation, its term also singular."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    words = WORD.findall(APOSTROPHES.sub("", text.casefold()))
    return [(word, singular(word)) for word in words]


def terms(text: str) -> list[str]:
    """The terms of a text, stopwords left out (unless that leaves none)."""
    found = [term for _, term in fold(text)]
    kept = [term for term in found if term not in STOPWORDS]
    return kept or found


# The index


@dataclass(frozen=True)
class Entry:
    """One catalog item as search sees it."""

    kind: str
    id: int
    name: str
    # The item's names (its own and its synonyms): (phrase, its terms).
    forms: tuple[tuple[str, frozenset[str]], ...]
    # Every term of its names and descriptions.
    text: frozenset[str]
    category_id: int | None = None
    procedure_ids: tuple[int, ...] = ()


class SearchIndex:
    """The catalog's names and texts, folded, with the vocabulary typos are
    corrected against. Built from a few plain queries; never holds ORM objects."""

    def __init__(
        self,
        signature: tuple,
        entries: list[Entry],
        cities: list[str],
        names: list[str],
    ):
        self.signature = signature
        self.built_at = time.monotonic()
        self.entries = entries
        self.cities: dict[tuple[str, ...], str] = {}
        for city in cities:
            self.cities[tuple(term for _, term in fold(city))] = city
        for alias, city in CITY_ALIASES.items():
            if city in cities:
                self.cities[tuple(term for _, term in fold(alias))] = city
        name_words = {t for e in entries for _, ts in e.forms for t in ts}
        name_words |= {t for key in self.cities for t in key}
        text_words = {t for e in entries for t in e.text} - name_words
        self.name_words = sorted(name_words)
        self.text_words = sorted(text_words)
        self.words = sorted(name_words | text_words)
        self.names = frozenset(name_words)
        self.known = frozenset(self.words)
        # How a term is written in the catalog, for "Showing results for ...".
        self.spelling: dict[str, str] = {}
        for word, term in fold(" ".join(names + cities)):
            if len(word) < len(self.spelling.get(term, word + "_")):
                self.spelling[term] = word
        self.procedures = {e.id: e for e in entries if e.kind == "procedures"}
        self.procedure_category = {
            id: e.category_id for id, e in self.procedures.items()
        }
        self.suggestions = [(e.name, " ".join(terms(e.name))) for e in entries]

    def completions(self, term: str) -> set[str]:
        """The known terms a query term stands for: itself and, when it is long
        enough, every term it begins ("rhino" for "rhinoplasty")."""
        found = {term}
        if len(term) >= MIN_FUZZY_LENGTH:
            start = bisect.bisect_left(self.words, term)
            for word in itertools.islice(self.words, start, None):
                if not word.startswith(term):
                    break
                found.add(word)
        return found

    def correct(self, term: str) -> str | None:
        """The known term closest to an unknown one, names first; None when
        none is close enough."""
        cutoff = CORRECTION_CUTOFF.get(len(term), DEFAULT_CORRECTION_CUTOFF)
        for vocabulary in (self.name_words, self.text_words):
            best = process.extractOne(
                term, vocabulary, scorer=fuzz.ratio, score_cutoff=cutoff
            )
            if best:
                return best[0]
        return None

    def split(self, term: str) -> list[str] | None:
        """Two known terms, one of a name, a run-together term is made of
        ("nosejob", "botoxmiami")."""
        for cut in range(3, len(term) - 2):
            head, tail = term[:cut], term[cut:]
            if head in self.known and tail in self.known:
                if head in self.names or tail in self.names:
                    return [head, tail]
        return None


def entry(kind: str, id: int, name: str, forms: list[str], texts: list[str], **kw):
    """An index entry: matched by its forms (names), found by its texts too."""
    folded = (terms(form) for form in forms)
    text = frozenset(t for part in [*forms, *texts] for _, t in fold(part))
    return Entry(
        kind,
        id,
        name,
        tuple((" ".join(ts), frozenset(ts)) for ts in folded),
        text,
        **kw,
    )


def build_index(signature: tuple) -> SearchIndex:
    """Read the catalog's names and texts into a new index."""
    entries, names = [], []
    by_category: dict[int, list[int]] = {}
    rows = db.session.execute(
        select(
            Procedure.id,
            Procedure.name,
            Procedure.short_description,
            Procedure.category_id,
        ).order_by(Procedure.name)
    )
    for id, name, description, category_id in rows:
        by_category.setdefault(category_id, []).append(id)
        forms = [name, *SYNONYMS.get(name, [])]
        names += forms
        entries.append(
            entry("procedures", id, name, forms, [description], category_id=category_id)
        )
    rows = db.session.execute(
        select(Category.id, Category.name, Category.description).order_by(Category.name)
    )
    for id, name, description in rows:
        forms = [name, *SYNONYMS.get(name, [])]
        names += forms
        procedures = tuple(by_category.get(id, ()))
        entries.append(
            entry(
                "categories", id, name, forms, [description], procedure_ids=procedures
            )
        )
    cities = set()
    rows = db.session.execute(
        select(
            Doctor.id, Doctor.name, Doctor.title, Doctor.city, Doctor.bio,
            Doctor.credentials,
        ).order_by(Doctor.name, Doctor.id)
    )  # fmt: skip
    for id, name, title, city, bio, credentials in rows:
        cities.add(city)
        # Shown as the model shows it ("Dr. Maya Chen", "Maya Chen, NP"); found by
        # the name alone. The Doctor is transient: never added to the session.
        shown = Doctor(name=name, credentials=credentials).display_name
        texts = [title, city, bio, credentials]
        names.append(name)
        entries.append(entry("doctors", id, shown, [name], texts))
    rows = db.session.execute(
        select(Package.id, Package.name, Package.description).order_by(Package.name)
    )
    for id, name, description in rows:
        names.append(name)
        entries.append(entry("packages", id, name, [name], [description]))
    return SearchIndex(signature, entries, sorted(cities), names)


# Statements every search runs are built once: building them costs more than
# SQLite takes to run them. Each function below builds a bounded few.


@functools.cache
def signature_statement():
    return union_all(
        *(
            select(
                literal(position),
                func.count(model.id),
                func.max(model.id),
                func.sum(func.length(model.name)),
            )
            for position, model in enumerate((Category, Procedure, Doctor, Package))
        )
    )


def catalog_signature() -> tuple:
    """Counts, highest ids and name lengths of the catalog: what changes when an
    item is added, removed or renamed. One cheap round trip."""
    return tuple(
        sorted(tuple(row) for row in db.session.execute(signature_statement()))
    )


def search_index() -> SearchIndex:
    """The app's index of the catalog, rebuilt when the catalog changed (or the
    index is INDEX_MAX_AGE_SECONDS old). One per app: memory stays bounded."""
    signature = catalog_signature()
    index = current_app.extensions.get("search_index")
    if (
        index is None
        or index.signature != signature
        or time.monotonic() - index.built_at > INDEX_MAX_AGE_SECONDS
    ):
        started = time.perf_counter()
        index = build_index(signature)
        current_app.extensions["search_index"] = index
        log.info(
            "search index: %d items in %.1f ms",
            len(index.entries),
            (time.perf_counter() - started) * 1000,
        )
    return index


# Reading a query


@dataclass
class Reading:
    """What a query was understood to ask for."""

    terms: list[str]
    city: str | None = None
    # The query as searched, when a word was corrected ("botox miami").
    corrected: str | None = None


def normalize_query(raw: str | None) -> tuple[str, bool]:
    """Collapse whitespace and cap the length; say whether it was cut."""
    query = " ".join((raw or "").split())
    if len(query) > MAX_QUERY_LENGTH:
        return query[:MAX_QUERY_LENGTH].rstrip(), True
    return query, False


def is_quoted(query: str) -> bool:
    """A query in quotes is searched as typed, without corrections."""
    return len(query) > 1 and query[0] in QUOTES and query[-1] in QUOTES


def read_query(index: SearchIndex, query: str) -> Reading:
    """Turn a query into known terms and a city: split words joined,
    run-together words split, typos corrected (not in quotes); lay terms stay
    as they are, for the synonyms to match."""
    literal = is_quoted(query)
    words = fold(query)
    shown = [word for word, _ in words]
    # Each distinct term, with the word it came from (None once joined).
    first_seen: dict[str, int | None] = {}
    for position, (_, term) in enumerate(words):
        if term not in STOPWORDS:
            first_seen.setdefault(term, position)
    joined: list[tuple[str, int | None]] = []
    for term, origin in list(first_seen.items())[:MAX_SEARCH_TERMS]:
        if joined and joined[-1][0] + term in index.names:
            joined[-1] = (joined[-1][0] + term, None)
        else:
            joined.append((term, origin))
    corrected = False
    found: list[str] = []
    for term, origin in joined:
        fixed = None if literal else correction(index, term)
        if isinstance(fixed, list):
            found += fixed
        elif fixed:
            found.append(fixed)
            shown[origin] = index.spelling.get(fixed, fixed)
            corrected = True
        else:
            found.append(term)
    city, rest = find_city(index, list(dict.fromkeys(found)))
    return Reading(rest, city, " ".join(shown) if corrected else None)


def correction(index: SearchIndex, term: str) -> list[str] | str | None:
    """What an unknown term should read: the two terms it runs together, or
    the closest known term; None when it stays (known, short, the beginning
    of known terms, or nothing close)."""
    if term in index.known or not MIN_FUZZY_LENGTH <= len(term) <= MAX_FUZZY_LENGTH:
        return None
    parts = index.split(term)
    if parts:
        return parts
    if len(index.completions(term)) > 1:
        return None
    return index.correct(term)


def find_city(index: SearchIndex, found: list[str]) -> tuple[str | None, list[str]]:
    """The first city named in the terms (longest name first), and the rest."""
    for length in (3, 2, 1):
        for start in range(len(found) - length + 1):
            city = index.cities.get(tuple(found[start : start + length]))
            if city:
                return city, found[:start] + found[start + length :]
    return None, found


# Matching


@dataclass(order=True)
class Match:
    """How well an item matches: 3 its name or synonym is the query, 2 the
    query contains it, 1 it contains the query, 0 its description does.
    `direct` is 0 for a procedure found through its category."""

    level: int
    direct: int
    similarity: float
    entry: Entry = field(compare=False)


def match(index: SearchIndex, found: list[str]) -> dict[str, list[Match]]:
    """Every item the terms find, best first, by kind."""
    by_kind: dict[str, list[Match]] = {kind: [] for kind in KINDS}
    if not found:
        return by_kind
    wanted = set(found)
    phrase = " ".join(found)
    stands_for = [index.completions(term) for term in found]
    for item in index.entries:
        best = None
        for form, form_terms in item.forms:
            covered = all(options & form_terms for options in stands_for)
            contained = form_terms <= wanted
            if not (covered or contained):
                continue
            level = 3 if covered and contained else 2 if contained else 1
            candidate = Match(level, 1, fuzz.token_sort_ratio(phrase, form), item)
            best = max(best, candidate) if best else candidate
        if best is None and all(options & item.text for options in stands_for):
            best = Match(0, 1, 0.0, item)
        if best:
            by_kind[item.kind].append(best)
    # A category named finds its procedures too ("injectables").
    procedures = {m.entry.id: m for m in by_kind["procedures"]}
    for category in by_kind["categories"]:
        if category.level >= 1:
            for pid in category.entry.procedure_ids:
                item = index.procedures[pid]
                derived = Match(category.level, 0, category.similarity, item)
                if pid not in procedures or procedures[pid] < derived:
                    procedures[pid] = derived
    by_kind["procedures"] = list(procedures.values())
    for matches in by_kind.values():
        matches.sort(key=lambda m: (-m.level, -m.direct, -m.similarity, m.entry.name))
    return by_kind


def treatments(matches: list[Match]) -> list[int]:
    """The procedures the query names best: their doctors and packages are
    results too. None when only descriptions matched."""
    if not matches or matches[0].level < 1:
        return []
    top = matches[0].level
    return [m.entry.id for m in matches if m.level == top][:RESULTS_PER_TYPE]


# Results


@dataclass
class SearchResults:
    """What a search found, by kind, best first, and how it read the query."""

    query: str
    truncated: bool = False
    categories: list = field(default_factory=list)
    procedures: list = field(default_factory=list)
    doctors: list = field(default_factory=list)
    packages: list = field(default_factory=list)
    # The query as searched when a word was corrected; the original stays
    # searchable in quotes.
    corrected_query: str | None = None
    # The city the query named: doctors and packages are only there.
    city: str | None = None
    # The procedure the query named, when one: the doctors are those who perform it.
    treatment: Procedure | None = None
    # On no result: the catalog names closest to the query.
    suggestions: list[str] = field(default_factory=list)
    # The non-empty groups, best matched first.
    groups: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(len(getattr(self, kind)) for kind in KINDS)

    @property
    def verbatim_query(self) -> str:
        """The original query in quotes, to search it without corrections."""
        return f'"{self.query}"'


@functools.cache
def by_ids_statement(model):
    return select(model).where(model.id.in_(bindparam("ids", expanding=True)))


def load(model, ids: list[int]) -> list:
    """The rows with these ids, in this order."""
    if not ids:
        return []
    found = db.session.scalars(by_ids_statement(model), {"ids": ids})
    rows = {row.id: row for row in found}
    return [rows[i] for i in ids if i in rows]


@functools.cache
def related_statement(kind: str, found: bool, named: bool, linked: bool, city: bool):
    """Doctors or packages: those found, or linked to procedures, those named
    first, in a city; top rated doctors first, cheapest packages first."""
    if kind == "doctors":
        model, link, order = Doctor, doctor_procedures, top_rated_order()
        owner, in_city = link.c.doctor_id, Doctor.city == bindparam("city")
    else:
        model, link, order = Package, package_procedures, [Package.price, Package.name]
        owner = link.c.package_id
        in_city = Package.doctor.has(Doctor.city == bindparam("city"))
    wanted = []
    if found:
        wanted.append(model.id.in_(bindparam("found", expanding=True)))
    if linked:
        procedures = link.c.procedure_id.in_(bindparam("linked", expanding=True))
        wanted.append(model.id.in_(select(owner).where(procedures)))
    # Items matched by name first: never cut by the limit.
    first = [model.id.in_(bindparam("named", expanding=True)).desc()] if named else []
    statement = select(model).order_by(*first, *order).limit(RESULTS_PER_TYPE)
    if wanted:
        statement = statement.where(or_(*wanted))
    if city:
        statement = statement.where(in_city)
    return statement


def in_order(rows, named: list[Match]) -> list:
    """Rows matched by name first, closest match first (equally close ones as
    the database ordered them: top rated, cheapest), then the others, at most
    RESULTS_PER_TYPE."""
    rank = {m.entry.id: -m.level for m in named}
    return sorted(rows, key=lambda row: rank.get(row.id, 0))[:RESULTS_PER_TYPE]


def related(
    kind: str, found: list[Match], linked: list[int], city: str | None, everyone: bool
) -> list:
    """Doctors or packages the query found (by name first, then by text) or
    linked to the procedures it named, only in the city if one (all of the
    city's when the query names nothing else)."""
    if not (found or linked or everyone):
        return []
    named = [m for m in found if m.level >= 1]
    values = {
        "found": [m.entry.id for m in found],
        "named": [m.entry.id for m in named],
        "linked": linked,
        "city": city,
    }
    statement = related_statement(
        kind, bool(found), bool(named), bool(linked), bool(city)
    )
    used = {name: value for name, value in values.items() if value}
    return in_order(db.session.scalars(statement, used), named)


def search_catalog(raw_query: str | None) -> SearchResults:
    """Find procedures, doctors, packages and categories for a query, forgiving
    typos, lay terms and plurals; "treatment city" finds that city's doctors
    who perform it, top rated first."""
    query, truncated = normalize_query(raw_query)
    results = SearchResults(query=query, truncated=truncated)
    if not query:
        return results
    index = search_index()
    reading = read_query(index, query)
    found = match(index, reading.terms)
    results.corrected_query = reading.corrected
    results.city = reading.city
    if reading.terms or reading.city:
        fill(results, found, reading)
    if not results.total:
        results.suggestions = suggest(index, reading, query)
    return results


def fill(results: SearchResults, found: dict[str, list[Match]], reading: Reading):
    """Load the matched items, and the doctors and packages they lead to."""
    cut = slice(RESULTS_PER_TYPE)
    results.categories = load(Category, [m.entry.id for m in found["categories"][cut]])
    results.procedures = load(Procedure, [m.entry.id for m in found["procedures"][cut]])
    named = treatments(found["procedures"])
    if len(named) == 1:
        results.treatment = next(
            (p for p in results.procedures if p.id == named[0]), None
        )
    city = reading.city
    # A city alone lists its doctors and packages; "xyzzy miami" finds nothing.
    city_alone = bool(city) and not reading.terms
    results.doctors = related("doctors", found["doctors"], named, city, city_alone)
    results.packages = related("packages", found["packages"], named, city, city_alone)
    # Doctors and packages found through the procedure (or the city alone)
    # rank as it does.
    strength = {kind: (m[0].level, m[0].direct) for kind, m in found.items() if m}
    through = (found["procedures"][0].level, 0) if named else (0, 0)
    if city_alone:
        through = (3, 0)
    for kind in ("doctors", "packages"):
        strength[kind] = max(strength.get(kind, (0, 0)), through)
    present = [kind for kind in KINDS if getattr(results, kind)]
    results.groups = sorted(present, key=strength.get, reverse=True)


def suggest(index: SearchIndex, reading: Reading, query: str) -> list[str]:
    """The catalog names closest to a query that found nothing, and the city it
    named ("xyzzy miami": Miami)."""
    wanted = " ".join(reading.terms) or " ".join(terms(query))
    city = [reading.city] if reading.city else []
    if not wanted:
        return city
    closest = process.extract(
        wanted,
        [folded for _, folded in index.suggestions],
        scorer=fuzz.WRatio,
        limit=SUGGESTIONS * 2,
        score_cutoff=SUGGESTION_CUTOFF,
    )
    names = [index.suggestions[position][0] for _, _, position in closest]
    return list(dict.fromkeys(names))[:SUGGESTIONS] + city


def result_categories(raw_query: str) -> list[int]:
    """The categories of a search's results, best first: category matches, then
    each matching procedure's category (one entry per result). Reads only the
    in-memory index."""
    query, _ = normalize_query(raw_query)
    if not query:
        return []
    index = search_index()
    found = match(index, read_query(index, query).terms)
    categories = [m.entry.id for m in found["categories"][:RESULTS_PER_TYPE]]
    return categories + [
        index.procedure_category[m.entry.id]
        for m in found["procedures"][:RESULTS_PER_TYPE]
    ]
