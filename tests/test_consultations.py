"""Consultation requests: the form on doctor, procedure and package pages, its
checks, spam defences, the confirmation, privacy and the `flask leads` commands."""

import csv
import io
import json
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select

from app import create_app
from helpers import Browser, app_config, stored_interactions
from models import ConsultationRequest, Doctor, Package, Procedure, db

VALID = {
    "name": "Maya Rivera",
    "email": "maya@example.com",
    "phone": "",
    "preferred_date": "",
    "message": "Is Botox right for forehead lines?",
    "consent": "y",
}


def requests_stored(app) -> list[ConsultationRequest]:
    with app.app_context():
        rows = db.session.scalars(select(ConsultationRequest)).all()
        db.session.expunge_all()
        return rows


def form_submits(app) -> list[tuple[str, int]]:
    return [
        (kind, item_id)
        for _, interaction, kind, item_id in stored_interactions(app)
        if interaction == "form_submit"
    ]


def doctor_slug(app) -> str:
    with app.app_context():
        return db.session.scalar(select(Doctor.slug).order_by(Doctor.id))


def send(browser, path, **changes):
    return browser.post(path + "/consultation", data={**VALID, **changes})


@pytest.mark.parametrize(
    "kind, model",
    [("doctors", Doctor), ("procedures", Procedure), ("packages", Package)],
)
def test_every_item_page_offers_the_form_and_stores_a_request(
    catalog, browser, kind, model
):
    with catalog.app_context():
        item = db.session.scalar(select(model).order_by(model.id))
        slug, item_id = item.slug, item.id
    page = browser.get(f"/{kind}/{slug}").get_data(as_text=True)
    assert "Request a consultation" in page
    assert f'action="/{kind}/{slug}/consultation#consultation"' in page

    answer = send(browser, f"/{kind}/{slug}")
    assert answer.status_code == 303
    confirmation = browser.get(answer.headers["Location"])
    text = confirmation.get_data(as_text=True)
    assert "Your request was sent" in text
    assert "What happens next" in text
    [stored] = requests_stored(catalog)
    assert stored.reference in text
    assert stored.name == "Maya Rivera"
    assert stored.consent_to_contact is True
    assert {"doctors": stored.doctor_id, "procedures": stored.procedure_id}.get(
        kind, stored.package_id
    ) == item_id
    if kind == "packages":  # the package's doctor answers it
        assert stored.doctor_id is not None
    # The visitor's strongest signal, on the item itself.
    assert form_submits(catalog) == [(model.kind, item_id)]


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"name": "  "}, "name", "Tell us your name."),
        ({"email": "", "phone": ""}, "email", "Give an email address or a phone"),
        ({"email": "not-an-email"}, "email", "Enter an email address like"),
        ({"phone": "call me"}, "phone", "Use digits"),
        ({"email": "", "phone": "12"}, "phone", "7 to 15 digits"),
        ({"consent": ""}, "consent", "only pass on your request with your consent"),
        ({"preferred_date": "2001-01-01"}, "preferred_date", "today or a later"),
        ({"preferred_date": "tomorrow"}, "preferred_date", "Enter a date like"),
        (
            {"preferred_date": (date.today() + timedelta(days=400)).isoformat()},
            "preferred_date",
            "within the next year",
        ),
        ({"message": "x" * 2001}, "message", "under 2,000 characters"),
        ({"name": "Maya\x00"}, "name", "control characters"),
    ],
)
def test_bad_input_is_shown_next_to_its_field_and_nothing_is_stored(
    catalog, browser, changes, field, message
):
    slug = doctor_slug(catalog)
    answer = send(browser, f"/doctors/{slug}", **changes)
    assert answer.status_code == 422
    html = answer.get_data(as_text=True)
    assert "Your request was not sent" in html
    error = html.index(f'id="{field}-error"')
    assert message in html[error : error + 300]
    assert f'aria-describedby="{field}-error"' in html
    # What was typed is kept for the next try.
    if field != "name" and changes.get("name") is None:
        assert 'value="Maya Rivera"' in html
    assert requests_stored(catalog) == []
    assert form_submits(catalog) == []


def test_a_phone_number_alone_is_enough(catalog, browser):
    slug = doctor_slug(catalog)
    answer = send(browser, f"/doctors/{slug}", email="", phone="+1 (305) 555-0142")
    assert answer.status_code == 303
    [stored] = requests_stored(catalog)
    assert (stored.email, stored.phone) == (None, "+1 (305) 555-0142")


def test_unknown_items_are_404(catalog, browser):
    assert send(browser, "/doctors/no-such-doctor").status_code == 404
    assert browser.post("/categories/injectables/consultation").status_code in (
        404,
        405,
    )
    assert requests_stored(catalog) == []


def test_the_honeypot_catches_bots_without_telling_them(catalog, browser):
    slug = doctor_slug(catalog)
    answer = send(browser, f"/doctors/{slug}", website="http://spam.example")
    assert answer.status_code == 303
    assert "Your request was sent" in browser.get(answer.headers["Location"]).text
    assert requests_stored(catalog) == []


def test_the_form_needs_its_csrf_token(database_url, catalog):
    app = create_app(app_config(database_url, WTF_CSRF_ENABLED=True))
    client = app.test_client()
    slug = doctor_slug(catalog)
    answer = client.post(f"/doctors/{slug}/consultation", data=VALID)
    assert answer.status_code == 403
    assert requests_stored(catalog) == []


def test_requests_are_rate_limited_per_visitor_and_per_address(database_url, catalog):
    app = create_app(
        app_config(
            database_url,
            CONSULTATION_RATE_LIMIT="2 per hour",
            CONSULTATION_RATE_LIMIT_PER_ADDRESS="4 per hour",
            TESTING=False,
        )
    )
    path = f"/doctors/{doctor_slug(catalog)}"
    visitor = Browser(app, address="198.51.100.1")
    assert send(visitor, path).status_code == 303
    assert send(visitor, path).status_code == 303
    refused = send(visitor, path)
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 3600  # the hour's window
    # New browsers at that address (a bot dropping its cookie each time) are
    # held by the address's looser limit.
    answers = [
        send(Browser(app, address="198.51.100.1"), path).status_code for _ in range(3)
    ]
    assert answers[0] == 303 and answers[-1] == 429
    # Someone elsewhere is not held.
    assert send(Browser(app, address="198.51.100.2"), path).status_code == 303
    assert len(requests_stored(catalog)) == 3 + answers.count(303)


def test_the_confirmation_shows_details_only_to_the_browser_that_sent_it(
    catalog, browser
):
    slug = doctor_slug(catalog)
    send(browser, f"/doctors/{slug}")
    [stored] = requests_stored(catalog)
    stranger = Browser(catalog, address="198.51.100.9")
    page = stranger.get("/consultations/sent").get_data(as_text=True)
    assert stored.reference not in page
    assert "Maya" not in page


def test_requests_are_downloaded_and_forgotten_with_the_visitor(catalog, browser):
    slug = doctor_slug(catalog)
    send(browser, f"/doctors/{slug}")
    other = Browser(catalog, address="203.0.113.7")  # same network, same browser type
    send(other, f"/doctors/{slug}", name="Sam Other", email="sam@example.com")

    privacy = browser.get("/privacy").get_data(as_text=True)
    assert "1 consultation request," in privacy
    data = json.loads(browser.get("/privacy/download").data)
    [mine] = data["consultation_requests"]
    assert (mine["name"], mine["email"]) == ("Maya Rivera", "maya@example.com")
    assert data["consultation_retention_days"] == 180

    answer = browser.post("/personalization/forget", json={})
    assert answer.get_json()["deleted"]["consultation_requests"] == 1
    assert [r.name for r in requests_stored(catalog)] == ["Sam Other"]


def test_an_untracked_visitor_can_still_send_a_request(catalog):
    private = Browser(catalog, headers={"Sec-GPC": "1"})
    slug = doctor_slug(catalog)
    answer = send(private, f"/doctors/{slug}")
    assert answer.status_code == 303
    page = private.get(answer.headers["Location"]).get_data(as_text=True)
    assert "privacy@antidote.example" in page  # how to have it erased
    [stored] = requests_stored(catalog)
    assert stored.user_id is None
    assert stored_interactions(catalog) == []  # GPC: no signal recorded
    assert private.cookie("antidote_visitor") is None


def test_requests_never_reach_the_personalize_outbox(database_url, catalog):
    app = create_app(
        app_config(
            database_url,
            AWS_PERSONALIZE_ENABLED=True,
            AWS_PERSONALIZE_TRACKING_ID="tracking-id",
            AWS_PERSONALIZE_SYNC_INTERVAL=0,
        )
    )
    visitor = Browser(app)
    slug = doctor_slug(catalog)
    send(visitor, f"/doctors/{slug}")
    from models import PersonalizeOutbox

    with app.app_context():
        queued = db.session.scalars(select(PersonalizeOutbox)).all()
        stored = " ".join(
            f"{r.event_type} {r.item_id} {r.impression} {r.user_id}" for r in queued
        )
    assert "form_submit" in stored  # the signal, with the item only
    assert "Maya" not in stored and "maya@example.com" not in stored


def test_requests_expire_after_the_retention_period(catalog, browser, runner):
    slug = doctor_slug(catalog)
    send(browser, f"/doctors/{slug}")
    send(browser, f"/doctors/{slug}", name="Recent")
    with catalog.app_context():
        old = db.session.scalar(
            select(ConsultationRequest).where(ConsultationRequest.name == "Maya Rivera")
        )
        old.created_at = old.created_at - timedelta(days=181)
        db.session.commit()
    result = catalog.test_cli_runner().invoke(args=["personalization", "cleanup"])
    assert result.exit_code == 0, result.output
    assert "1 consultation requests older than 180 days" in result.output
    assert [r.name for r in requests_stored(catalog)] == ["Recent"]


def test_leads_list_and_export(catalog, browser):
    slug = doctor_slug(catalog)
    send(browser, f"/doctors/{slug}", preferred_date=date.today().isoformat())
    send(browser, f"/doctors/{slug}", name='=HYPERLINK("http://x")', phone="5550142")
    runner = catalog.test_cli_runner()

    listed = runner.invoke(args=["leads", "list"])
    assert listed.exit_code == 0, listed.output
    assert "Maya Rivera <maya@example.com>" in listed.output
    assert "2 requests." in listed.output

    exported = runner.invoke(args=["leads", "export"])
    assert exported.exit_code == 0, exported.output
    rows = list(csv.DictReader(io.StringIO(exported.output)))
    assert [r["name"] for r in rows] == ["Maya Rivera", '\'=HYPERLINK("http://x")']
    assert rows[0]["preferred_date"] == date.today().isoformat()
    with catalog.app_context():
        doctor = db.session.scalar(select(Doctor).where(Doctor.slug == slug))
        assert rows[0]["doctor"] == rows[0]["about"] == doctor.display_name
    with catalog.app_context():
        assert db.session.scalar(select(func.count(ConsultationRequest.id))) == 2

    recent = runner.invoke(args=["leads", "list", "--since", "1"])
    assert "2 requests." in recent.output
    assert runner.invoke(args=["leads", "list", "--since", "0"]).exit_code == 2


def test_the_site_is_named_for_doctors_with_their_credentials(catalog, client):
    with catalog.app_context():
        nurse = db.session.scalar(select(Doctor).where(Doctor.credentials == "NP"))
        surgeon = db.session.scalar(select(Doctor).where(Doctor.credentials == "MD"))
        assert nurse.display_name == f"{nurse.name}, NP"
        assert surgeon.display_name == f"Dr. {surgeon.name}"
        nurse_slug, nurse_name = nurse.slug, nurse.name
    page = client.get(f"/doctors/{nurse_slug}").get_data(as_text=True)
    assert f"{nurse_name}, NP" in page
    assert f"Dr. {nurse_name}" not in page


def test_the_form_is_not_double_counted_by_the_tracker(catalog, browser):
    page = browser.get(f"/doctors/{doctor_slug(catalog)}").get_data(as_text=True)
    form = page[page.index('class="consultation-form"') - 200 :]
    assert "data-track-ignore" in form[: form.index(">", 200) + 1]


def test_confirmation_without_a_request_is_generic(catalog, browser):
    page = browser.get("/consultations/sent")
    assert page.status_code == 200
    assert "Your reference" not in page.get_data(as_text=True)
