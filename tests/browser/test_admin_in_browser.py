"""The /admin dashboard in a real browser: signing in through the form, every
page with its server-drawn SVG charts visible, no console error, nothing wider
than a phone's screen, and no serious accessibility violation."""

import json
import sqlite3
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from werkzeug.security import generate_password_hash

USERNAME, PASSWORD = "browser-admin", "a long browser password"
PAGES = [
    "",
    "recommendations",
    "experiment",
    "regions",
    "quality",
    "journeys",
    "cohorts",
]
PHONE, LAPTOP = 375, 1280
BLOCKING_IMPACTS = {"serious", "critical"}
VISITORS = [f"admintest{n:02d}" for n in range(12)]
CHARTS = """
() => [...document.querySelectorAll('svg.chart-svg')].map(svg => {
  const box = svg.getBoundingClientRect();
  return {width: box.width, height: box.height,
          title: svg.querySelector('title')?.textContent || ''};
})
"""


@contextmanager
def writing(site):
    """A connection to the live site's database, committed at the end."""
    connection = sqlite3.connect(site.database)
    try:
        with connection:
            yield connection
    finally:
        connection.close()


def stamp(moment: datetime) -> str:
    """A timestamp as SQLAlchemy writes it into SQLite."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def seed_dashboard(site) -> None:
    """A dozen visitors over three weeks, in both arms: page views, recommended
    lists and clicks on them, engaged time, a city, a rejected-event count."""
    now = datetime.now(UTC)
    procedures = [row[0] for row in site.query("SELECT id FROM procedures LIMIT 6")]
    with writing(site) as db:
        db.execute(
            "INSERT INTO admin_users (username, password_hash, created_at) "
            "VALUES (?, ?, ?)",
            (USERNAME, generate_password_hash(PASSWORD), stamp(now)),
        )
        for n, visitor in enumerate(VISITORS):
            first = now - timedelta(days=20 - n)
            arm = "control" if n % 4 == 0 else "personalized"
            db.execute(
                "INSERT INTO experiment_assignments (experiment, user_id, arm, "
                "assigned_at) VALUES ('personalization-holdout', ?, ?, ?)",
                (visitor, arm, stamp(first)),
            )
            db.execute(
                "INSERT INTO visitor_preferences (user_id, city, updated_at) "
                "VALUES (?, 'Miami', ?)",
                (visitor, stamp(first)),
            )
            for visit, when in enumerate((first, first + timedelta(days=8))):
                list_id = f"{n:02d}{visit}".ljust(16, "f")
                items = [
                    [pid, "engine" if i % 2 else "fallback"]
                    for i, pid in enumerate(procedures)
                ]
                db.execute(
                    "INSERT INTO recommendation_impressions (id, user_id, request_id, "
                    "list_name, item_kind, items, item_count, arm, shown_at) "
                    "VALUES (?, ?, 'r', 'home:procedure', 'procedure', ?, ?, ?, ?)",
                    (list_id, visitor, json.dumps(items), len(items), arm, stamp(when)),
                )
                rows = [
                    ("view", "page", None, '{"path":"/"}', when),
                    (
                        "click",
                        "procedure",
                        procedures[n % 6],
                        json.dumps({"list_id": list_id, "position": n % 6 + 1}),
                        when + timedelta(seconds=5),
                    ),
                    (
                        "view",
                        "procedure",
                        procedures[n % 6],
                        None,
                        when + timedelta(seconds=6),
                    ),
                    (
                        "engaged",
                        "procedure",
                        procedures[n % 6],
                        json.dumps({"seconds": 10 + n, "path": "/procedures/x"}),
                        when + timedelta(seconds=40),
                    ),
                ]
                db.executemany(
                    "INSERT INTO user_interactions (user_id, session_id, "
                    "interaction_type, target_type, target_id, extra_data, timestamp) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(visitor, f"s{visit}", *row[:4], stamp(row[4])) for row in rows],
                )
        db.execute(
            "INSERT INTO rejected_event_counts (day, source, reason, count) "
            "VALUES (?, 'tracker', 'unknown_item', 3)",
            (datetime.now(UTC).date().isoformat(),),
        )


def remove_seeded(site) -> None:
    with writing(site) as db:
        db.execute("DELETE FROM admin_users WHERE username = ?", (USERNAME,))
        for table in ("experiment_assignments", "visitor_preferences"):
            db.execute(f"DELETE FROM {table} WHERE user_id LIKE 'admintest%'")
        db.execute(
            "DELETE FROM rejected_event_counts WHERE reason = 'unknown_item' "
            "AND source = 'tracker' AND count = 3"
        )


@pytest.fixture
def dashboard_site(site):
    seed_dashboard(site)
    yield site
    remove_seeded(site)
    site.clear_history()


def sign_in(page, site) -> None:
    page.goto(site.url("/admin/"))
    assert "/admin/login" in page.url
    page.get_by_label("Username").fill(USERNAME)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/admin/")


def blocking_violations(page) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    assert results.response["testEngine"]["name"] == "axe-core"
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        f"{[node['target'] for node in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in BLOCKING_IMPACTS
    ]


@pytest.mark.parametrize("width", [PHONE, LAPTOP])
def test_every_dashboard_page_draws_its_charts(
    dashboard_site, chromium, artifacts, width
):
    context = chromium.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        sign_in(page, dashboard_site)
        for name in PAGES:
            answer = page.goto(dashboard_site.url(f"/admin/{name}"))
            assert answer.status == 200, name
            assert "no-store" in answer.headers["cache-control"]
            charts = page.evaluate(CHARTS)
            assert charts, f"no chart on /admin/{name}"
            for chart in charts:
                assert chart["width"] > 100 and chart["height"] > 50, (name, chart)
                assert chart["title"], name
            assert page.locator("svg.chart-svg").first.is_visible()
            assert "No data yet" not in page.locator("main").inner_text() or name in (
                "quality",  # no webhook deliveries in this test
            )
            assert page.evaluate("document.documentElement.scrollWidth") <= width, name
            page.screenshot(
                path=artifacts / f"admin-{name or 'overview'}-{width}.png",
                full_page=True,
            )
        assert errors == []
    finally:
        context.close()


def test_dashboard_pages_have_no_serious_accessibility_violations(dashboard_site, page):
    sign_in(page, dashboard_site)
    found = {}
    for name in PAGES:
        page.goto(dashboard_site.url(f"/admin/{name}"))
        violations = blocking_violations(page)
        if violations:
            found[name] = violations
    assert found == {}


def test_a_wrong_password_then_logging_out(dashboard_site, page):
    page.goto(dashboard_site.url("/admin/login"))
    page.get_by_label("Username").fill(USERNAME)
    page.get_by_label("Password").fill("not the password at all")
    page.get_by_role("button", name="Sign in").click()
    assert "do not match an admin" in page.locator("main").inner_text()
    sign_in(page, dashboard_site)
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/admin/login")
    page.goto(dashboard_site.url("/admin/quality"))
    assert "/admin/login" in page.url
