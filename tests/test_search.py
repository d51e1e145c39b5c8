"""Search forgives: typos, lay terms, "treatment + city", accents and plurals;
results come grouped, and a search that finds nothing is never a dead end."""

import html as html_module
import re
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from sqlalchemy import event, select

from catalog import doctors_page
from models import Category, Doctor, Package, Procedure, db
from search import read_query, result_categories, search_catalog, search_index


@dataclass(frozen=True)
class TopRated:
    """The expected first doctor: the top-rated one in a city (who performs a
    procedure, when one is given), as the doctors listing orders them."""

    city: str
    procedure: str | None = None

    def resolve(self) -> str:
        procedure = None
        if self.procedure:
            procedure = db.session.scalars(
                select(Procedure).filter_by(name=self.procedure)
            ).one()
        return doctors_page(self.city, procedure).items[0].display_name


# (query, the group that must answer it, its expected first result)
RELEVANCE = [
    # Misspellings
    ("botx", "procedures", "Botox"),
    ("lip filer", "procedures", "Lip Fillers"),
    ("rhinoplsty", "procedures", "Rhinoplasty"),
    ("liposuctin", "procedures", "Liposuction"),
    ("blepharoplsty", "procedures", "Blepharoplasty"),
    ("microneedlng", "procedures", "Microneedling"),
    ("kybela", "procedures", "Kybella"),
    ("coolsculptng", "procedures", "CoolSculpting"),
    ("chemcial peels", "procedures", "Chemical Peel"),
    ("tatoo removal", "procedures", "Laser Tattoo Removal"),
    ("brest augmentation", "procedures", "Breast Augmentation"),
    ("hydrafacal", "procedures", "HydraFacial"),
    ("ultherepy", "procedures", "Ultherapy"),
    ("glow seris", "packages", "Glow Series"),
    ("miammi botox", "doctors", TopRated("Miami", "Botox")),
    ("chicgo lip filler", "doctors", TopRated("Chicago", "Lip Fillers")),
    # Lay terms and synonyms
    ("anti-wrinkle injections", "procedures", "Botox"),
    ("lip injections", "procedures", "Lip Fillers"),
    ("nose job", "procedures", "Rhinoplasty"),
    ("boob job", "procedures", "Breast Augmentation"),
    ("tummy tuck", "procedures", "Tummy Tuck"),
    ("lipo", "procedures", "Liposuction"),
    ("BBL", "procedures", "Brazilian Butt Lift"),
    ("fat freezing", "procedures", "CoolSculpting"),
    ("eyelid surgery", "procedures", "Blepharoplasty"),
    ("vampire facial", "procedures", "PRP Facial"),
    ("hair transplant", "procedures", "FUE Hair Transplant"),
    ("double chin", "procedures", "Kybella"),
    ("face lift", "procedures", "Facelift"),
    ("cool sculpting", "procedures", "CoolSculpting"),
    ("nosejob", "procedures", "Rhinoplasty"),
    ("rhino", "procedures", "Rhinoplasty"),
    # Accents, case, punctuation, plurals
    ("BÓTOX!!!", "procedures", "Botox"),
    ("Lip-Filler", "procedures", "Lip Fillers"),
    ("dark circles", "procedures", "Tear Trough Filler"),
    # Treatment plus city, either way round, with the usual short names
    ("botox miami", "doctors", TopRated("Miami", "Botox")),
    ("miami botox", "doctors", TopRated("Miami", "Botox")),
    ("new york lip filler", "doctors", TopRated("New York", "Lip Fillers")),
    ("botox nyc", "doctors", TopRated("New York", "Botox")),
    ("lip filler la", "doctors", TopRated("Los Angeles", "Lip Fillers")),
    ("fat freezing in houston", "doctors", TopRated("Houston", "CoolSculpting")),
    ("MIAMI", "doctors", TopRated("Miami")),
    # Doctors by their own name, packages, categories
    ("okafor", "doctors", "Dr. Nathan Okafor"),
    ("dr. okafur", "doctors", "Dr. Nathan Okafor"),
    ("isabel chen", "doctors", "Isabel Chen, PA-C"),
    ("sun damage reset", "packages", "Sun Damage Reset"),
    ("mommy makeover plus", "packages", "Mommy Makeover Plus"),
    ("injectables", "categories", "Injectables"),
    ("breast surgery", "categories", "Breast Surgery"),
    ("hair loss", "categories", "Hair Restoration"),
]


def first_result(results, group: str) -> str | None:
    items = getattr(results, group)
    return items[0].display_name if items else None


@pytest.mark.parametrize(
    ("query", "group", "expected"), RELEVANCE, ids=[q for q, _, _ in RELEVANCE]
)
def test_relevance(catalog, query, group, expected):
    with catalog.app_context():
        if isinstance(expected, TopRated):
            expected = expected.resolve()
        results = search_catalog(query)
        assert first_result(results, group) == expected, results


# Pages


def section_titles(html: str, section_id: str) -> list[str]:
    """The card titles in one section of a page ([] when it is absent)."""
    found = re.search(rf'<section id="{section_id}"[^>]*>(.*?)</section>', html, re.S)
    if not found:
        return []
    titles = re.findall(r'data-track-id="\d+">([^<]*)</a>', found.group(1))
    return [html_module.unescape(title) for title in titles]


def section_order(html: str) -> list[str]:
    return re.findall(r'<section id="([a-z]+)"', html)


def search_page(client, query: str) -> str:
    response = client.get("/search", query_string={"q": query})
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_results_come_grouped_by_kind(client, catalog):
    page = search_page(client, "botox")
    assert section_order(page) == ["procedures", "doctors", "packages"]
    assert section_titles(page, "procedures")[0] == "Botox"
    with catalog.app_context():
        botox = db.session.scalars(select(Procedure).filter_by(name="Botox")).one()
        performing = {d.display_name for d in botox.doctors}
        including = {p.name for p in botox.packages}
    # Each card sits in its own group: procedures link procedures, and so on.
    procedures = re.search(r'<section id="procedures".*?</section>', page, re.S)
    assert 'data-track-type="doctor"' not in procedures.group(0)
    assert set(section_titles(page, "doctors")) <= performing
    assert including <= set(section_titles(page, "packages"))
    assert "Top-rated doctors for Botox" in page


def test_a_category_named_comes_first_with_its_procedures(client, catalog):
    page = search_page(client, "injectables")
    assert section_order(page)[0] == "categories"
    with catalog.app_context():
        names = set(
            db.session.scalars(
                select(Procedure.name)
                .join(Category)
                .filter(Category.slug == "injectables")
            )
        )
    assert names <= set(section_titles(page, "procedures"))


def test_treatment_and_city_lists_only_that_citys_doctors_top_rated_first(
    client, catalog
):
    for query in ("botox miami", "miami botox", "Botox in Miami"):
        page = search_page(client, query)
        with catalog.app_context():
            botox = db.session.scalars(select(Procedure).filter_by(name="Botox")).one()
            expected = [d.display_name for d in doctors_page("Miami", botox).items]
            packages = {
                p.name
                for p in db.session.scalars(select(Package))
                if p.doctor.city == "Miami" and botox in p.procedures
            }
        assert expected and section_titles(page, "doctors") == expected, query
        assert set(section_titles(page, "packages")) == packages
        assert "Doctors in Miami who perform Botox" in page
        assert "/doctors?procedure=botox&amp;city=Miami" in page


def test_a_treatment_nobody_performs_in_the_city_says_so(client, catalog):
    with catalog.app_context():
        there = db.session.scalars(select(Doctor).filter_by(city="Scottsdale")).all()
        assert not any(
            p.name == "Eyebrow Transplant" for d in there for p in d.procedures
        )
    page = search_page(client, "eyebrow transplant scottsdale")
    assert section_order(page) == ["procedures"]
    assert "No doctor in Scottsdale performs Eyebrow Transplant yet." in page
    assert 'href="/doctors?procedure=eyebrow-transplant&amp;city="' in page


def test_a_city_alone_lists_its_doctors(client, catalog):
    page = search_page(client, "nyc")
    with catalog.app_context():
        expected = [d.display_name for d in doctors_page("New York").items]
    assert section_titles(page, "doctors") == expected
    assert "Doctors in New York" in page


def test_a_city_with_nothing_else_matching_is_no_result(client, catalog):
    page = search_page(client, "xyzzy miami")
    assert "0 results" in page
    assert 'href="/search?q=Miami"' in page  # suggested instead


def test_doctors_are_found_by_their_own_name(catalog):
    with catalog.app_context():
        doctor = db.session.scalars(select(Doctor).filter_by(credentials="NP")).first()
        first, last = doctor.name.split()
        for query in (doctor.name, f"Dr {doctor.name}", doctor.display_name):
            assert search_catalog(query).doctors[0].id == doctor.id, query
        # Everyone of that name, top rated first.
        everyone = doctors_page(per_page=100).items
        namesakes = [d for d in everyone if d.name.split()[-1] == last]
        assert doctor in namesakes and search_catalog(last).doctors == namesakes
        # Their name first, even where others also match the city.
        found = search_catalog(f"{last} {doctor.city}").doctors
        assert found[0].id == doctor.id
        assert {d.city for d in found} == {doctor.city}


def test_a_corrected_search_says_so_and_keeps_the_original_searchable(client, catalog):
    page = search_page(client, "botx")
    assert re.search(r"Showing results for\s+<strong>botox</strong>", page)
    assert section_titles(page, "procedures")[0] == "Botox"
    # The original, in quotes, is searched as typed: nothing, then "did you mean".
    link = re.search(r'Search instead for\s+<a href="([^"]+)">botx</a>', page)
    assert link and link.group(1) == "/search?q=%22botx%22"
    verbatim = client.get(html_module.unescape(link.group(1))).get_data(as_text=True)
    assert "0 results" in verbatim and "Showing results for" not in verbatim
    assert re.search(r'Did you mean\s+<a href="/search\?q=Botox">Botox</a>\?', verbatim)


def test_synonyms_and_plurals_are_not_corrections(catalog):
    with catalog.app_context():
        for query in ("nose job", "lip injections", "Lip Fillers", "BOTOX"):
            assert search_catalog(query).corrected_query is None, query
        assert search_catalog("lip filer").corrected_query == "lip filler"
        assert search_catalog("Botx in Miami").corrected_query == "botox in miami"


def test_very_short_words_are_not_corrected(catalog):
    """ "lif" is one letter from "lift", but three-letter words are too often
    right as typed (ipl, fue, bbl) to be changed."""
    with catalog.app_context():
        index = search_index()
        reading = read_query(index, "lif")
        assert reading.terms == ["lif"] and reading.corrected is None
        results = search_catalog("lif")
        assert results.total == 0 and "Breast Lift" in results.suggestions
        assert read_query(index, "lipp").terms == ["lip"]  # four letters are


def test_no_result_offers_did_you_mean_and_popular_procedures(client, catalog):
    page = search_page(client, "xeominnnnn")
    assert "0 results" in page
    assert re.search(r'Did you mean\s+<a href="/search\?q=Xeomin">Xeomin</a>\?', page)
    popular = section_titles(page, "popular")
    assert len(popular) == 6
    assert not section_titles(page, "procedures")
    page = search_page(client, "qqqqqqqq")
    assert "Did you mean" not in page  # nothing close: only the popular list
    assert len(section_titles(page, "popular")) == 6


def test_did_you_mean_names_the_closest_items(catalog):
    with catalog.app_context():
        assert search_catalog('"botx"').suggestions[0] == "Botox"
        assert search_catalog('"sculptraa"').suggestions[0] == "Sculptra"
        assert search_catalog("zzz").suggestions == []


def test_found_searches_have_no_popular_list(client, catalog):
    assert 'id="popular"' not in search_page(client, "botox")


# Kept from the first search (tests/test_pages.py)


def test_search_finds_names_and_descriptions(client, catalog):
    page = search_page(client, "lip filler")
    assert "Lip Fillers" in section_titles(page, "procedures")
    # "dark circles" is only in Tear Trough Filler's description.
    page = search_page(client, "dark circles")
    assert section_order(page) == ["procedures"]
    assert section_titles(page, "procedures") == ["Tear Trough Filler"]
    assert section_titles(search_page(client, "MIAMI"), "doctors")


@pytest.mark.parametrize("query", ["%", "_", "%%", "*", "'", "\\"])
def test_search_treats_wildcards_literally(client, catalog, query):
    # "%" appears in package descriptions ("15% less"), but must not match everything.
    page = search_page(client, query)
    assert "0 results" in page
    assert section_order(page) == ["popular"]


def test_empty_search_invites_a_query(client, catalog):
    for url in ("/search", "/search?q=", "/search?q=+++"):
        response = client.get(url)
        assert response.status_code == 200
        assert "Type a procedure" in response.get_data(as_text=True)


def test_very_long_search_is_cut_not_refused(client, catalog):
    # Up to the 4 KB query-string ceiling (gunicorn's too), a long search is cut.
    response = client.get("/search?q=" + "botox " * 600)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "only its first" in page
    assert section_titles(page, "procedures")[0] == "Botox"
    page = search_page(client, "x" * 3000)
    assert "only its first 200 characters" in page and "0 results" in page


def test_search_escapes_html(client, catalog):
    page = search_page(client, "<script>alert(1)</script>")
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;" in page
    # In the correction notice too: the original is shown, escaped.
    page = search_page(client, "botx <b>bold</b>")
    assert "Showing results for" in page
    assert "<b>bold" not in page and "&lt;b&gt;bold" in page


# The index


@contextmanager
def statements_run():
    """The SQL statements run inside the block."""
    statements = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(db.engine, "before_cursor_execute", record)


def test_the_index_is_built_once_and_rebuilt_when_the_catalog_changes(catalog):
    with catalog.app_context():
        search_catalog("botox")
        index = catalog.extensions["search_index"]
        with statements_run() as statements:
            search_catalog("lip filler miami")
        assert catalog.extensions["search_index"] is index
        # The signature, then categories, procedures, doctors and packages.
        assert len(statements) <= 5
        injectables = db.session.scalars(select(Category).filter_by(name="Injectables"))
        db.session.add(
            Procedure(
                name="Polynucleotides",
                slug="polynucleotides",
                category=injectables.one(),
                short_description="Salmon DNA injections for crepey under-eye skin.",
                price_min=500,
                price_max=900,
                recovery_time="1-2 days",
            )
        )
        db.session.commit()
        assert first_result(search_catalog("polynucleotide"), "procedures") == (
            "Polynucleotides"
        )
        assert catalog.extensions["search_index"] is not index
        # A rename is seen too (the names' lengths are in the signature).
        item = db.session.scalars(select(Procedure).filter_by(name="Kybella")).one()
        item.name = "Kybella Chin Injections"
        db.session.commit()
        assert search_catalog("kybella").procedures[0].name == "Kybella Chin Injections"


def test_result_categories_reads_only_the_index(catalog):
    with catalog.app_context():
        body = db.session.scalars(select(Category.id).filter_by(slug="body-contouring"))
        assert result_categories("coolsculpting") == [body.one()]
        assert result_categories("zzz") == []
        assert result_categories("") == []
        with statements_run() as statements:
            injectables = result_categories("botx miami")
        assert injectables and len(set(injectables)) == 1
        assert len(statements) == 1  # the catalog's signature, nothing else
