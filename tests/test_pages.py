"""Every page renders with the demo catalog and links where a visitor expects."""

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from app import create_app
from helpers import app_config
from models import Category, Doctor, Package, Procedure, UserInteraction, db, utcnow


def card_titles(html: str, section_id: str | None = None) -> list[str]:
    """Return the card headings on a page, or in one section of it."""
    if section_id:
        start = html.index(f'id="{section_id}"')
        html = html[start : html.index("</section>", start)]
    return re.findall(r"<h3><a[^>]*>([^<]*)</a>", html)


def linked_slugs(html: str, kind: str) -> set[str]:
    return set(re.findall(rf'href="/{kind}/([a-z0-9-]+)"', html))


def first(app, model, **filters):
    with app.app_context():
        item = db.session.scalars(select(model).filter_by(**filters)).first()
        db.session.expunge(item)
        return item


def test_home_shows_three_full_sections(client, catalog):
    html = client.get("/").get_data(as_text=True)
    assert len(card_titles(html, "categories")) == 6
    assert len(card_titles(html, "procedures")) == 6
    assert len(card_titles(html, "doctors")) == 6
    assert '<h2 id="categories-heading">Popular categories</h2>' in html
    assert '<h2 id="doctors-heading">Popular doctors</h2>' in html


def test_home_orders_sections_by_recent_popularity(client, catalog):
    """Popularity rebuilt from the log by `refresh` orders the home page."""
    with catalog.app_context():
        rhinoplasty = db.session.scalars(
            select(Procedure).filter_by(slug="rhinoplasty")
        ).one()
        doctor = db.session.scalars(select(Doctor).order_by(Doctor.rating)).first()
        now = utcnow()
        # Five visitors each: fewer would not count (MIN_VISITORS).
        visits = [("procedure", rhinoplasty.id)] * 6 + [("doctor", doctor.id)] * 5
        for index, (target_type, target_id) in enumerate(visits):
            db.session.add(
                UserInteraction(
                    user_id=f"visitor{index}",
                    session_id="s",
                    interaction_type="view",
                    target_type=target_type,
                    target_id=target_id,
                    timestamp=now,
                )
            )
        # Interest older than the popularity window does not count.
        for index in range(10):
            db.session.add(
                UserInteraction(
                    user_id=f"old{index}",
                    session_id="s",
                    interaction_type="view",
                    target_type="category",
                    target_id=rhinoplasty.category_id + 1,
                    timestamp=now - timedelta(days=60),
                )
            )
        db.session.commit()
        catalog.extensions["personalization"].refresh_statistics()
        doctor_name = doctor.display_name
    html = client.get("/").get_data(as_text=True)
    assert card_titles(html, "procedures")[0] == "Rhinoplasty"
    assert card_titles(html, "categories")[0] == "Facial Surgery"
    assert card_titles(html, "doctors")[0] == doctor_name


def test_category_page_links_all_its_procedures(client, catalog):
    category = first(catalog, Category, slug="injectables")
    response = client.get("/categories/injectables")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    with catalog.app_context():
        expected = set(
            db.session.scalars(
                select(Procedure.slug).where(Procedure.category_id == category.id)
            )
        )
    assert expected and expected <= linked_slugs(html, "procedures")
    assert linked_slugs(html, "doctors")


def test_procedure_page_links_its_doctors_and_packages(client, catalog):
    html = client.get("/procedures/botox").get_data(as_text=True)
    with catalog.app_context():
        botox = db.session.scalars(select(Procedure).filter_by(slug="botox")).one()
        doctors = {d.slug for d in botox.doctors}
        packages = {p.slug for p in botox.packages}
    # The top 6, and a link to all of them (tests/test_doctors.py).
    assert len(linked_slugs(html, "doctors")) == 6
    assert linked_slugs(html, "doctors") <= doctors
    assert packages and packages == linked_slugs(html, "packages")
    assert 'href="/categories/injectables"' in html
    assert "$300 – $800" in html


def test_doctor_page_links_the_procedures_they_perform(client, catalog):
    with catalog.app_context():
        doctor = db.session.scalars(select(Doctor).order_by(Doctor.id)).first()
        performed = {p.slug for p in doctor.procedures}
        slug = doctor.slug
    html = client.get(f"/doctors/{slug}").get_data(as_text=True)
    assert performed and performed <= linked_slugs(html, "procedures")


def test_package_page_shows_price_procedures_and_doctor(client, catalog):
    with catalog.app_context():
        package = db.session.scalars(
            select(Package).filter_by(slug="liquid-facelift")
        ).one()
        included = {p.slug for p in package.procedures}
        doctor_slug = package.doctor.slug
        price = f"${package.price:,}"
    html = client.get("/packages/liquid-facelift").get_data(as_text=True)
    assert included == linked_slugs(html, "procedures")
    assert linked_slugs(html, "doctors") == {doctor_slug}
    assert price in html


def test_catalog_links_carry_tracking_attributes(client, catalog):
    html = client.get("/").get_data(as_text=True)
    links = re.findall(
        r'<a href="/(categories|procedures|doctors)/[^"]*"\s+([^>]*)>', html
    )
    assert links
    singular = {
        "categories": "category",
        "procedures": "procedure",
        "doctors": "doctor",
    }
    for kind, attributes in links:
        assert f'data-track-type="{singular[kind]}"' in attributes
        assert re.search(r'data-track-id="\d+"', attributes)


@pytest.mark.parametrize(
    "path",
    ["/categories/nope", "/procedures/nope", "/doctors/nope", "/packages/nope", "/x"],
)
def test_unknown_pages_show_the_friendly_404(client, catalog, path):
    response = client.get(path)
    assert response.status_code == 404
    assert "couldn't find that page" in response.get_data(as_text=True)
    assert response.mimetype == "text/html"


def test_json_clients_get_json_errors(client):
    response = client.get("/nope", headers={"Accept": "application/json"})
    assert response.status_code == 404
    assert response.is_json and "error" in response.get_json()


def test_privacy_page(client):
    response = client.get("/privacy")
    assert response.status_code == 200
    assert "<h1>Privacy</h1>" in response.get_data(as_text=True)


def test_pages_load_nothing_from_other_sites(client, catalog):
    for path in ("/", "/procedures/botox", "/doctors", "/search?q=botox", "/privacy"):
        html = client.get(path).get_data(as_text=True)
        assert not re.search(r'(src|href)="(https?:)?//', html), path
        # Only our own script files: no inline code, nothing a page needs to work.
        for tag in re.findall(r"<script[^>]*>", html):
            assert 'src="/static/js/' in tag


def test_security_headers(client):
    response = client.get("/privacy")
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    ["/", "/procedures/botox", "/privacy", "/personalization/recommendations/doctors"],
)
def test_personal_answers_stay_out_of_shared_caches(catalog, browser, path):
    """A proxy or CDN must never serve one visitor's interests (or CSRF token) to
    another: pages and JSON are private and vary by cookie."""
    response = browser.get(path)
    assert response.headers["Cache-Control"] == "private, no-store"
    assert "Cookie" in response.headers["Vary"]
    static = browser.get("/static/css/site.css")
    static.close()  # a file response: close it, or the file stays open
    assert "no-store" not in static.headers.get("Cache-Control", "")


def cookie_header(response, name) -> str:
    return next(h for h in response.headers.getlist("Set-Cookie") if h.startswith(name))


def test_cookies_are_secure_over_https(database_url, catalog):
    """Behind TLS (or trusted proxies that say so) every cookie is Secure,
    HttpOnly and SameSite=Lax, without a setting per deployment."""
    direct = create_app(app_config(database_url)).test_client()
    over_https = direct.get("/privacy", base_url="https://antidote.example")
    proxied = (
        create_app(app_config(database_url, TRUSTED_PROXY_COUNT=1))
        .test_client()
        .get("/privacy", headers={"X-Forwarded-Proto": "https"})
    )
    for response in (over_https, proxied):
        for name in ("session=", "antidote_visitor="):
            header = cookie_header(response, name)
            assert "Secure" in header and "HttpOnly" in header, header
            assert "SameSite=Lax" in header
    plain = create_app(app_config(database_url)).test_client().get("/privacy")
    assert "Secure" not in cookie_header(plain, "session=")
    # Without a trusted proxy, a client cannot claim HTTPS.
    forged = direct.get("/privacy", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" not in cookie_header(forged, "session=")


def test_healthz_reports_the_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok"}


def test_pages_carry_a_csrf_token_for_the_tracker(client):
    html = client.get("/privacy").get_data(as_text=True)
    assert re.search(r'<meta name="csrf-token" content="[^"]{20,}">', html)


def test_index_pages_list_the_whole_catalog(client, catalog):
    html = client.get("/categories").get_data(as_text=True)
    assert len(linked_slugs(html, "categories")) == 8
    html = client.get("/procedures").get_data(as_text=True)
    assert len(linked_slugs(html, "procedures")) == 60
    doctors = set()
    for page in range(1, 5):
        html = client.get(f"/doctors?page={page}").get_data(as_text=True)
        doctors |= linked_slugs(html, "doctors")
    assert len(doctors) == 40
    html = client.get("/packages").get_data(as_text=True)
    assert len(linked_slugs(html, "packages")) == 20


def test_doctors_can_be_filtered_by_city(client, catalog):
    with catalog.app_context():
        in_miami = set(db.session.scalars(select(Doctor.slug).filter_by(city="Miami")))
    html = client.get("/doctors?city=Miami").get_data(as_text=True)
    assert in_miami and linked_slugs(html, "doctors") == in_miami
    assert "Doctors in Miami" in html
    assert client.get("/doctors?city=Atlantis").status_code == 400
