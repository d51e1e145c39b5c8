"""The look of a shop, server side: favicon, link previews (Open Graph), drawn
pictures on cards and headers, doctors' initials, and nothing the CSP would block."""

import re
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from types import SimpleNamespace

from sqlalchemy import select

from models import Doctor, Package, Procedure, db

SVG = "{http://www.w3.org/2000/svg}"


class Tags(HTMLParser):
    """Every start tag of a page, with its attributes decoded."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def find(self, tag: str, **wanted) -> list[dict]:
        return [
            attrs
            for name, attrs in self.tags
            if name == tag and all(attrs.get(k) == v for k, v in wanted.items())
        ]


def meta(html: str) -> dict[str, str]:
    """The page's <meta property|name=... content=...>, decoded."""
    found = {}
    for attrs in Tags(html).find("meta"):
        key = attrs.get("property") or attrs.get("name")
        if key and "content" in attrs:
            found[key] = attrs["content"]
    return found


def cards(html: str) -> list[str]:
    """The markup of each card on a page."""
    return re.findall(r'<li class="card">(.*?)</li>', html, re.S)


def card_name(card: str) -> str:
    return re.search(r"<h3><a[^>]*>([^<]*)</a>", card).group(1)


def art_of(card: str) -> str:
    match = re.search(r'<svg class="art art-card".*?</svg>', card, re.S)
    assert match, f"no picture on card {card_name(card)!r}"
    return match.group(0)


def avatar_of(markup: str) -> str:
    match = re.search(r'<svg class="avatar.*?</svg>', markup, re.S)
    assert match, "no avatar"
    return match.group(0)


def get(client, path: str) -> str:
    answer = client.get(path)
    assert answer.status_code == 200, path
    return answer.get_data(as_text=True)


def first_slug(app, model) -> str:
    with app.app_context():
        return db.session.scalar(select(model.slug).order_by(model.id))


# Favicon


def test_every_page_links_the_favicon_and_it_is_served(client, catalog):
    for path in ("/", "/procedures/botox", "/no-such-page"):
        html = client.get(path).get_data(as_text=True)
        [icon] = Tags(html).find("link", rel="icon")
        assert icon["href"] == "/static/favicon.svg", path
        assert icon["type"] == "image/svg+xml"
    with client.get("/static/favicon.svg") as answer:
        assert answer.status_code == 200
        assert answer.mimetype == "image/svg+xml"
        body = answer.get_data()
    svg = ElementTree.fromstring(body)  # well-formed, and an SVG
    assert svg.tag == f"{SVG}svg"
    assert svg.get("viewBox") == "0 0 64 64"
    # Drawn with presentation attributes only, like every picture on the site.
    assert b"style" not in body


# Open Graph


def test_open_graph_tags_come_from_the_page_title_and_description(client, catalog):
    tags = meta(get(client, "/procedures/botox"))
    with catalog.app_context():
        botox = db.session.scalar(select(Procedure).filter_by(slug="botox"))
        description = botox.short_description
    assert tags["og:title"] == "Botox"
    assert tags["og:description"] == description == tags["description"]
    assert tags["og:type"] == "website"
    assert tags["og:site_name"] == "Antidote"
    assert tags["og:url"] == "http://localhost/procedures/botox"
    assert tags["twitter:card"] == "summary"

    # A page without its own description shares the site's.
    tags = meta(get(client, "/categories"))
    assert tags["og:title"] == "All categories"
    assert tags["og:description"].startswith("Compare medical-aesthetic procedures")


def test_open_graph_tags_are_escaped(client, catalog):
    query = "\"><script>alert('og')</script> & <b>bold</b>"
    answer = client.get("/search", query_string={"q": query})
    html = answer.get_data(as_text=True)
    tags = meta(html)
    # The attribute holds the visitor's text exactly, as text.
    assert tags["og:title"] == f"Search: {query}"
    assert "<script>alert" not in html
    assert "<b>bold" not in html
    # The address is the page's, never the query string a link may carry.
    assert tags["og:url"] == "http://localhost/search"


def test_open_graph_tags_on_an_error_page(client):
    tags = meta(client.get("/no-such-page").get_data(as_text=True))
    assert tags["og:title"] == "Page not found"
    assert tags["og:url"] == "http://localhost/no-such-page"


# Pictures on cards and page headers


def test_category_and_procedure_cards_carry_their_picture(client, catalog):
    html = get(client, "/categories")
    category_cards = cards(html)
    assert len(category_cards) == 8
    for card in category_cards:
        art = art_of(card)
        # Decorative: outside the title link, hidden from screen readers.
        assert 'aria-hidden="true"' in art
        assert art not in re.search(r"<h3>.*?</h3>", card, re.S).group(0)
    html = get(client, "/procedures")
    procedure_cards = cards(html)
    assert len(procedure_cards) == 60
    pictures = [art_of(card) for card in procedure_cards]
    # Each procedure gets its own picture.
    assert len(set(pictures)) == 60
    # Card titles still read as the item's name.
    assert "Botox" in [card_name(card) for card in procedure_cards]


def test_pictures_are_the_same_wherever_and_whenever_an_item_shows(client, catalog):
    def botox_art(path):
        [card] = [c for c in cards(get(client, path)) if card_name(c) == "Botox"]
        return art_of(card)

    on_index = botox_art("/procedures")
    assert botox_art("/procedures") == on_index
    assert botox_art("/categories/injectables") == on_index
    assert 'data-art="procedure-botox"' in on_index


def test_a_procedure_looks_like_its_category(client, catalog):
    html = get(client, "/procedures")

    def fills(art):
        return re.search(r'<rect width="640" height="160" fill="([^"]+)"', art).group(1)

    by_name = {card_name(card): art_of(card) for card in cards(html)}
    # Same category, same colours; another category, others.
    assert fills(by_name["Botox"]) == fills(by_name["Lip Fillers"])
    assert fills(by_name["Botox"]) != fills(by_name["Chemical Peel"])


def test_pictures_depend_on_the_slug_not_the_database_id(app):
    art = app.jinja_env.get_template("_illustrations.html").module.illustration
    category = SimpleNamespace(kind="category", slug="injectables", id=1)
    one = SimpleNamespace(kind="procedure", slug="botox", id=3, category=category)
    same = SimpleNamespace(kind="procedure", slug="botox", id=917, category=category)
    other = SimpleNamespace(kind="procedure", slug="dysport", id=3, category=category)
    assert str(art(one)) == str(art(same))
    assert str(art(one)) != str(art(other))


def test_a_new_category_and_odd_slugs_still_get_a_picture(app):
    art = app.jinja_env.get_template("_illustrations.html").module.illustration
    new = SimpleNamespace(kind="category", slug="wellness-drips", id=99)
    odd = SimpleNamespace(kind="procedure", slug="Ünïcode_&_CAPS", id=5, category=new)
    for item in (new, odd):
        svg = ElementTree.fromstring(str(art(item, "banner")))
        assert svg.get("class") == "art art-banner"
        assert svg.find("rect").get("fill").startswith("#")
        assert len(svg.findall(".//path")) >= 2  # a wave and a glyph
    labelled = ElementTree.fromstring(str(art(new, label="Wellness drips")))
    assert labelled.get("role") == "img"
    assert labelled.get("aria-label") == "Wellness drips"
    assert labelled.get("aria-hidden") is None


def test_the_category_page_header_has_its_picture(client, catalog):
    html = get(client, "/categories/injectables")
    header = html[html.index('<nav class="breadcrumbs"') : html.index("<h1>")]
    assert '<svg class="art art-banner"' in header
    assert 'data-art="category-injectables"' in header


def test_the_procedure_page_header_has_its_picture(client, catalog):
    html = get(client, "/procedures/botox")
    header = html[html.index("<article>") : html.index("<h1>")]
    assert 'data-art="procedure-botox"' in header


# Doctors' avatars


def test_doctor_cards_show_initials_in_a_colour_of_their_own(client, catalog):
    with catalog.app_context():
        doctors = {
            d.display_name: (d.initials, d.id)
            for d in db.session.scalars(select(Doctor))
        }
    html = get(client, "/doctors")
    colours = {}
    doctor_cards = cards(html)
    assert len(doctor_cards) >= 10
    for card in doctor_cards:
        initials, doctor_id = doctors[card_name(card)]
        avatar = avatar_of(card)
        svg = ElementTree.fromstring(avatar)
        assert svg.get("aria-hidden") == "true"  # the name is right beside it
        assert svg.find("text").text == initials
        assert len(initials) == 2
        colours.setdefault(svg.find("circle").get("fill"), set()).add(doctor_id)
    # Colours follow the id, so neighbours differ.
    assert len(colours) >= 5


def test_a_doctors_avatar_is_the_same_on_every_page(client, catalog):
    with catalog.app_context():
        package = db.session.scalar(select(Package).order_by(Package.id))
        slug, name = package.slug, package.doctor.display_name
    on_package = cards(get(client, f"/packages/{slug}"))
    on_index = [
        c for page in range(1, 5) for c in cards(get(client, f"/doctors?page={page}"))
    ]
    [on_package] = [c for c in on_package if card_name(c) == name]
    [on_index] = [c for c in on_index if card_name(c) == name]
    assert avatar_of(on_package) == avatar_of(on_index)


def test_a_doctor_without_initials_gets_a_silhouette(app):
    avatar = app.jinja_env.get_template("_illustrations.html").module.avatar
    svg = ElementTree.fromstring(str(avatar(SimpleNamespace(id=3, initials=""))))
    assert svg.find("text") is None
    assert svg.find("path") is not None
    large = avatar(SimpleNamespace(id=3, initials="Q"), "large")
    large = ElementTree.fromstring(str(large))
    assert large.find("text").text == "Q"
    assert large.get("width") == "96"


def test_the_doctor_page_header_shows_the_avatar(client, catalog):
    slug = first_slug(catalog, Doctor)
    html = get(client, f"/doctors/{slug}")
    header = html[html.index('<article class="profile">') : html.index("<h1>")]
    assert '<svg class="avatar avatar-large"' in header


# Nothing the Content-Security-Policy would block


def main_pages(app, browser) -> dict[str, str]:
    """The HTML of every main page, a personalized home and the form's answers."""
    doctor, package = first_slug(app, Doctor), first_slug(app, Package)
    paths = [
        "/",
        "/categories",
        "/categories/injectables",
        "/procedures",
        "/procedures/botox",
        "/doctors",
        "/doctors?city=Miami",
        "/doctors?page=2",
        f"/doctors/{doctor}",
        "/packages",
        f"/packages/{package}",
        "/search?q=filler",
        "/search?q=nothing-matches-this",
        "/search",
        "/privacy",
        "/privacy/forget",
        "/no-such-page",
    ]
    pages = {path: browser.get(path).get_data(as_text=True) for path in paths}
    # Home again, now with "Recently viewed" and reasons on the cards.
    pages["/ (personalized)"] = browser.get("/").get_data(as_text=True)
    invalid = browser.post(f"/doctors/{doctor}/consultation", data={"name": ""})
    assert invalid.status_code == 422
    pages["consultation form with errors"] = invalid.get_data(as_text=True)
    sent = browser.post(
        f"/doctors/{doctor}/consultation",
        data={"name": "Maya Rivera", "email": "maya@example.com", "consent": "y"},
    )
    assert sent.status_code == 303
    pages["consultation sent"] = browser.get(sent.headers["Location"]).get_data(
        as_text=True
    )
    return pages


def test_no_page_has_inline_styles_or_scripts(catalog, browser):
    pages = main_pages(catalog, browser)
    assert "Recently viewed" in pages["/ (personalized)"]
    assert "field-invalid" in pages["consultation form with errors"]
    for name, html in pages.items():
        tags = Tags(html).tags
        assert tags, name
        styled = [(tag, attrs) for tag, attrs in tags if "style" in attrs]
        assert styled == [], name
        assert not [tag for tag, _ in tags if tag == "style"], name
        scripts = [attrs for tag, attrs in tags if tag == "script"]
        assert all(attrs.get("src", "").startswith("/static/") for attrs in scripts)
        handlers = [
            (tag, key) for tag, attrs in tags for key in attrs if key.startswith("on")
        ]
        assert handlers == [], name


def test_every_picture_is_labelled_or_hidden_from_screen_readers(catalog, browser):
    for name, html in main_pages(catalog, browser).items():
        for attrs in Tags(html).find("svg"):
            assert attrs.get("aria-hidden") == "true" or (
                attrs.get("role") == "img" and attrs.get("aria-label")
            ), (name, attrs)
            assert attrs.get("focusable") == "false", (name, attrs)
        for attrs in Tags(html).find("img"):
            assert "alt" in attrs, (name, attrs)


def test_pictures_are_outside_every_title_link(catalog, browser):
    for name, html in main_pages(catalog, browser).items():
        for title in re.findall(r"<h3><a[^>]*>(.*?)</a>", html, re.S):
            assert "<" not in title, (name, title)


def test_pictures_cost_no_query_per_card(client, catalog):
    """A procedure's picture reads its category, already loaded with the page."""
    from sqlalchemy import event

    statements = []

    def record(connection, cursor, statement, *args):
        statements.append(statement)

    with catalog.app_context():
        event.listen(db.engine, "before_cursor_execute", record)
        try:
            get(client, "/procedures")  # 60 procedure cards, 8 categories
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
    reading_categories = [s for s in statements if "FROM categories" in s]
    assert 1 <= len(reading_categories) <= 2
    assert len(statements) < 20


def test_favicon_ico_leads_to_the_svg_icon(client):
    answer = client.get("/favicon.ico")
    assert answer.status_code == 301
    assert answer.headers["Location"].endswith("/static/favicon.svg")
