"""The look of the site in a real browser, on a phone, a tablet and a laptop: card
grids without orphans, nothing wider than the screen, targets big enough to tap, a
hero that makes way for a returning visitor, and the consultation form's layout.
Screenshots of every page at every width go to the artifacts folder."""

import pytest

PHONE, TABLET, LAPTOP = 375, 768, 1280
# Columns of a card grid at each width.
COLUMNS = {PHONE: 1, TABLET: 2, LAPTOP: 3}
GRID_PAGES = [
    "/",
    "/procedures",
    "/categories/injectables",
    "/doctors",
    "/packages",
    "/procedures/botox",
]
# Apple's and Google's guidance: 44 CSS pixels, with half a pixel for rounding.
TAP = 43.5

# Each grid: its box, and each card's box, in page coordinates.
GRID_BOXES = """
() => [...document.querySelectorAll('.cards')].map(grid => {
  const box = e => { const r = e.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top + scrollY}; };
  return {grid: box(grid), cards: [...grid.children].map(box),
          section: grid.closest('section')?.id || grid.closest('section')
            ?.getAttribute('aria-labelledby') || ''};
})
"""


def slug(path: str) -> str:
    return path.strip("/").replace("/", "-").replace("?", "-") or "home"


def rows(cards: list[dict]) -> list[list[dict]]:
    by_top = {}
    for card in cards:
        by_top.setdefault(round(card["top"]), []).append(card)
    return [by_top[top] for top in sorted(by_top)]


def check_grid(grid: dict, columns: int, where: str) -> None:
    box, cards = grid["grid"], grid["cards"]
    assert cards, where
    card_rows = rows(cards)
    # The first row has as many cards as there are columns (or all of them).
    assert len(card_rows[0]) == min(columns, len(cards)), where
    # Every row, the last included, runs from the grid's left edge to its right.
    for row in card_rows:
        assert abs(min(c["left"] for c in row) - box["left"]) < 1, where
        assert abs(max(c["right"] for c in row) - box["right"]) < 1, where
    # In particular the last card closes the last row.
    assert abs(cards[-1]["right"] - box["right"]) < 1, where


def page_at(chromium, width: int, height: int = 900):
    context = chromium.new_context(viewport={"width": width, "height": height})
    return context, context.new_page()


@pytest.mark.parametrize("width", [PHONE, TABLET, LAPTOP])
def test_card_grids_have_no_orphans(site, chromium, artifacts, width):
    context, page = page_at(chromium, width)
    checked = 0
    for path in GRID_PAGES:
        page.goto(site.url(path))
        grids = page.evaluate(GRID_BOXES)
        assert grids, path
        for grid in grids:
            check_grid(grid, COLUMNS[width], f"{path} {grid['section']} at {width}px")
            checked += 1
        assert page.evaluate("document.documentElement.scrollWidth") <= width, path
        page.screenshot(
            path=artifacts / f"layout-{slug(path)}-{width}.png", full_page=True
        )
    # Lists of many lengths: 6 (home), 10, 7, 8, 6 (procedures by category), 20...
    assert checked >= 15
    context.close()


@pytest.mark.parametrize("count", range(1, 8))
@pytest.mark.parametrize("width", [TABLET, LAPTOP])
def test_any_number_of_cards_fills_the_last_row(site, chromium, width, count):
    """Trim a real grid to `count` cards: the last row is still full."""
    context, page = page_at(chromium, width)
    page.goto(site.url("/procedures"))
    page.evaluate(
        """count => { const grid = document.querySelector('.cards');
             while (grid.children.length > count) grid.lastElementChild.remove(); }""",
        count,
    )
    [grid] = page.evaluate(GRID_BOXES)[:1]
    check_grid(grid, COLUMNS[width], f"{count} cards at {width}px")
    context.close()


def test_nothing_is_wider_than_a_phone(site, chromium):
    [(doctor,)] = site.query("SELECT slug FROM doctors ORDER BY id LIMIT 1")
    [(package,)] = site.query("SELECT slug FROM packages ORDER BY id LIMIT 1")
    context, page = page_at(chromium, PHONE, 667)
    paths = GRID_PAGES + [
        "/categories",
        f"/doctors/{doctor}",
        f"/packages/{package}",
        "/search?q=filler",
        "/search?q=" + "longwordwithoutspaces" * 8,
        "/privacy",
        "/privacy/forget",
        "/no-such-page",
    ]
    for path in paths:
        page.goto(site.url(path))
        wide = page.evaluate(
            """() => [...document.querySelectorAll('body *')]
                 .filter(e => e.getBoundingClientRect().right > innerWidth + 0.5
                 && !e.closest('.recent-strip, .chips, .honeypot, .skip-link')
                 && !e.parentElement.closest('svg'))  // clipped by its svg
                 .map(e => e.tagName + '.' + e.getAttribute('class'))"""
        )
        assert wide == [], path
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE, path
    context.close()


def test_everything_people_tap_is_at_least_44_pixels(site, chromium):
    context, page = page_at(chromium, PHONE, 667)
    page.goto(site.url("/procedures/botox"))
    page.goto(site.url("/"))  # now with "Recently viewed"
    checked = 0
    for path in ["/", "/doctors", "/procedures/botox", "/procedures"]:
        page.goto(site.url(path))
        small = page.evaluate(
            """() => [...document.querySelectorAll(
                 'header a, header button, header input, .see-all a, .recent-strip a, '
                 + '.chips a, .pagination a, .button, button, select, .card, '
                 + '.field input:not([type=checkbox]), .field textarea, '
                 + '.site-footer a, .breadcrumbs a')]
               .filter(e => !e.closest('.honeypot'))
               .map(e => [e.tagName + ' ' + e.textContent.trim().slice(0, 20),
                          e.getBoundingClientRect().height])
               .filter(([, height]) => height > 0)"""
        )
        checked += len(small)
        assert [name for name, height in small if height < TAP] == [], path
        # A card's title link covers its whole card: a tap on the picture opens it.
        card = page.locator(".card").first
        card.scroll_into_view_if_needed()
        box = card.bounding_box()
        hit = page.evaluate(
            "([x, y]) => document.elementFromPoint(x, y)?.closest('a')?.href",
            [box["x"] + box["width"] - 8, box["y"] + 8],
        )
        assert hit == card.locator("h3 a").evaluate("a => a.href"), path
    assert checked > 40
    context.close()


def test_a_returning_visitors_list_starts_on_the_first_phone_screen(
    site, chromium, artifacts
):
    context, page = page_at(chromium, PHONE, 667)
    page.goto(site.url("/"))
    assert page.locator(".hero-compact").count() == 0
    page.goto(site.url("/procedures/botox"))
    page.goto(site.url("/procedures/lip-fillers"))
    page.goto(site.url("/"))
    assert page.locator(".hero.hero-compact").count() == 1
    heading = page.locator("#procedures-heading")
    assert heading.bounding_box()["y"] + heading.bounding_box()["height"] < 667
    # "Recently viewed": one row of links, scrolling sideways inside itself.
    tops = page.locator(".recent-strip li").evaluate_all(
        "items => items.map(i => Math.round(i.getBoundingClientRect().top))"
    )
    assert len(tops) == 2 and len(set(tops)) == 1
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE
    # "Because you viewed ...": readable, set apart from the description.
    why = page.locator("#procedures .why").first
    assert why.inner_text().startswith("Because you viewed")
    assert why.evaluate("e => getComputedStyle(e).backgroundColor") != (
        why.evaluate("e => getComputedStyle(e.closest('.card')).backgroundColor")
    )
    page.screenshot(path=artifacts / "layout-home-returning-375.png")
    context.close()


@pytest.mark.parametrize("width", [PHONE, LAPTOP])
def test_consultation_form_layout_and_its_spam_trap(site, chromium, artifacts, width):
    context, page = page_at(chromium, width)
    page.goto(site.url("/procedures/botox"))
    email, phone = (
        page.locator(f"#{name}").bounding_box() for name in ("email", "phone")
    )
    if width == PHONE:  # stacked
        assert phone["y"] >= email["y"] + email["height"]
    else:  # side by side
        assert phone["y"] == email["y"] and phone["x"] > email["x"] + email["width"]
    # The honeypot: nowhere on screen, never reached with the keyboard.
    trap = page.locator(".honeypot").bounding_box()
    assert trap["x"] + trap["width"] <= 0
    assert not page.locator("#website").is_visible() or trap["x"] < 0
    page.locator("#message").focus()
    focused = []
    for _ in range(4):
        page.keyboard.press("Tab")
        active = "document.activeElement.id || document.activeElement.tagName"
        focused.append(page.evaluate(active))
    assert "website" not in focused
    assert focused[:2] == ["consent", "BUTTON"]
    # Errors sit next to their fields, in the error colour.
    page.get_by_role("button", name="Send request").click()  # the browser stops it
    page.evaluate("document.querySelector('.consultation-form').noValidate = true")
    page.get_by_role("button", name="Send request").click()
    page.wait_for_load_state()
    assert page.locator(".form-errors").is_visible()
    name_field = page.locator(".field-invalid").first
    assert name_field.locator(".field-error").is_visible()
    border = name_field.locator("input").evaluate(
        "e => getComputedStyle(e).borderTopColor"
    )
    assert border == "rgb(179, 38, 30)"
    page.screenshot(
        path=artifacts / f"layout-consultation-errors-{width}.png", full_page=True
    )
    context.close()
