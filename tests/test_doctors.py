"""Doctors: the city filter and the city a visitor chose, top rated by a
Bayesian average, credentials, pages of doctors, "Popular in {city}" and the
regional match rates."""

from decimal import Decimal

import pytest
from sqlalchemy import select

from helpers import Browser, catalog_id
from models import Doctor, Procedure, VisitorPreference, db, top_rated_order


def doctor_names(html: str) -> list[str]:
    return [
        part.split(">", 1)[1].split("<", 1)[0]
        for part in html.split('data-track-type="doctor"')[1:]
    ]


def test_top_rated_is_a_bayesian_average(catalog):
    with catalog.app_context():
        few, many = db.session.scalars(select(Doctor).order_by(Doctor.id).limit(2))
        few.rating, few.review_count = Decimal("5.0"), 2
        many.rating, many.review_count = Decimal("4.8"), 300
        db.session.commit()
        order = list(db.session.scalars(select(Doctor.id).order_by(*top_rated_order())))
        assert order.index(many.id) < order.index(few.id)


def test_credentials_decide_who_is_a_doctor(catalog):
    with catalog.app_context():
        titles = {d.credentials: d for d in db.session.scalars(select(Doctor)).all()}
        assert set(titles) == {"MD", "NP", "PA-C"}
        for credentials, doctor in titles.items():
            assert doctor.display_name.startswith("Dr. ") == (credentials == "MD")
            assert not doctor.name.startswith("Dr.")
        assert Doctor(name="Ana María de la Cruz").initials == "AC"


def test_doctors_are_listed_a_page_at_a_time(catalog, client):
    first = client.get("/doctors").get_data(as_text=True)
    assert len(doctor_names(first)) == 12
    assert "Page 1 of 4" in first
    assert 'rel="next" href="/doctors?page=2' in first
    last = client.get("/doctors?page=4").get_data(as_text=True)
    assert len(doctor_names(last)) == 4
    every = set()
    for number in range(1, 5):
        every |= set(doctor_names(client.get(f"/doctors?page={number}").text))
    assert len(every) == 40
    assert client.get("/doctors?page=5").status_code == 404


@pytest.mark.parametrize("page", ["0", "-1", "two", "²", "9999999"])
def test_bad_page_numbers_are_refused(catalog, client, page):
    answer = client.get(f"/doctors?page={page}")
    assert answer.status_code in (400, 404)
    assert "page" in answer.get_data(as_text=True)


def test_unknown_cities_are_refused_with_a_message(catalog, client):
    answer = client.get("/doctors?city=Atlantis")
    assert answer.status_code == 400
    assert "Atlantis" in answer.get_data(as_text=True)


def test_the_chosen_city_is_remembered_in_the_profile(catalog, browser):
    page = browser.get("/doctors?city=Miami").get_data(as_text=True)
    assert "Doctors in Miami" in page
    with catalog.app_context():
        assert db.session.scalar(select(VisitorPreference.city)) == "Miami"
    # Later pages use it without being told.
    again = browser.get("/doctors").get_data(as_text=True)
    assert '<option value="Miami" selected>' in again
    assert "Doctors in Miami" in again
    procedure = browser.get("/procedures/botox").get_data(as_text=True)
    assert "Doctors in Miami who perform Botox" in procedure
    # "All cities" forgets it.
    browser.get("/doctors?city=")
    with catalog.app_context():
        assert db.session.scalar(select(VisitorPreference.city)) is None
    # It is in "download my data" while kept.
    browser.get("/doctors?city=Seattle")
    assert browser.get("/privacy/download").get_json()["city"] == "Seattle"


def test_a_city_is_never_guessed_or_kept_for_untracked_visitors(catalog):
    private = Browser(catalog, headers={"Sec-GPC": "1"})
    page = private.get("/doctors?city=Miami").get_data(as_text=True)
    assert "Doctors in Miami" in page  # the filter works
    with catalog.app_context():
        assert db.session.scalars(select(VisitorPreference)).all() == []
    assert "Doctors in Miami" not in private.get("/doctors").get_data(as_text=True)


def test_procedure_pages_show_top_doctors_and_link_to_all(catalog, client):
    html = client.get("/procedures/botox").get_data(as_text=True)
    section = html[html.index('id="doctors"') : html.index('id="similar"')]
    assert len(doctor_names(section)) == 6
    assert "/doctors?procedure=botox" in section
    with catalog.app_context():
        botox = db.session.get(Procedure, catalog_id(catalog, Procedure, "botox"))
        total = len(botox.doctors)
    assert f"See all {total} doctors" in section
    listed = set()
    for number in range(1, 10):
        answer = client.get(f"/doctors?procedure=botox&page={number}")
        if answer.status_code == 404:
            break
        listed |= set(doctor_names(answer.text))
    assert len(listed) == total


def test_procedure_pages_filter_doctors_by_city(catalog, client):
    html = client.get("/procedures/botox?city=Miami").get_data(as_text=True)
    section = html[html.index('id="doctors"') : html.index('id="similar"')]
    with catalog.app_context():
        in_miami = {
            d.display_name
            for d in db.session.scalars(select(Doctor).where(Doctor.city == "Miami"))
        }
    shown = doctor_names(section)
    assert shown and set(shown) <= in_miami


def test_popular_in_the_chosen_city_on_the_home_page(catalog, browser):
    assert "Popular in" not in browser.get("/").get_data(as_text=True)
    browser.get("/doctors?city=Chicago")
    browser.get("/procedures/botox")
    home = browser.get("/").get_data(as_text=True)
    with catalog.app_context():
        in_chicago = {
            d.display_name
            for d in db.session.scalars(select(Doctor).where(Doctor.city == "Chicago"))
        }
        botox = db.session.get(Procedure, catalog_id(catalog, Procedure, "botox"))
        botox_in_chicago = {
            d.display_name for d in botox.doctors if d.city == "Chicago"
        }
    assert botox_in_chicago
    # Among the doctors picked for the visitor, the chosen city's come first.
    for_you = doctor_names(home[home.index('id="doctors"') :].split("</section>")[0])
    assert set(for_you[: len(botox_in_chicago)]) == botox_in_chicago
    # "Popular in Chicago": the city's other doctors, none shown twice.
    section = home[home.index('id="popular-in-city"') :].split("</section>")[0]
    assert "Popular in Chicago" in section
    popular = doctor_names(section)
    assert popular and set(popular) <= in_chicago
    assert not set(popular) & set(for_you)


def test_regions_command_reports_match_rates(catalog):
    runner = catalog.test_cli_runner()
    empty = runner.invoke(args=["personalization", "regions"])
    assert "No visitor has chosen a city yet" in empty.output
    botox = catalog_id(catalog, Procedure, "botox")
    for number in range(5):
        visitor = Browser(catalog, address=f"198.51.100.{number}")
        visitor.get("/doctors?city=Miami")
        visitor.track(
            {
                "interaction_type": "click",
                "target_type": "procedure",
                "target_id": botox,
            }
        )
    Browser(catalog, address="198.51.100.99").get("/doctors?city=Seattle")
    result = runner.invoke(args=["personalization", "regions", "--sample", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "Miami: 3 of 5 visitors sampled, top 10" in lines
    assert "Seattle: 1 of 1 visitors sampled, top 10" in lines
    miami = lines[lines.index("Miami: 3 of 5 visitors sampled, top 10") + 1]
    assert "100.0%" in miami and "high" in miami and "(3)" in miami


def test_match_rate_labels():
    from personalization.regions import match_label

    assert [match_label(r) for r in (1.0, 0.8, 0.79, 0.4, 0.39, 0.0)] == [
        "high",
        "high",
        "medium",
        "medium",
        "low",
        "low",
    ]


def test_category_pages_link_to_all_their_doctors(catalog, client):
    html = client.get("/categories/injectables").get_data(as_text=True)
    assert "/doctors?category=injectables" in html
    listed = set()
    for number in range(1, 10):
        answer = client.get(f"/doctors?category=injectables&page={number}")
        if answer.status_code == 404:
            break
        assert "Doctors for injectables" in answer.text
        listed |= set(doctor_names(answer.text))
    with catalog.app_context():
        from models import Category

        injectables = db.session.scalar(
            select(Category).where(Category.slug == "injectables")
        )
        expected = {d.display_name for p in injectables.procedures for d in p.doctors}
    assert listed == expected
    assert client.get("/doctors?category=nothing").status_code == 404
