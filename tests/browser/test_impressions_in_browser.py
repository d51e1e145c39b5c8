"""Click-through in a real browser: a click on a recommended card sends its
list's id and position, and that list was recorded as shown."""

import json

from browser_helpers import stay_on_page, tracking_requests, wait_for_rows


def test_a_click_on_a_recommended_card_names_its_list(site, page):
    sent = tracking_requests(page)
    page.goto(site.url("/"))
    stay_on_page(page)
    card = page.locator('#doctors a[data-track-type="doctor"]').nth(1)
    list_id = card.get_attribute("data-list-id")
    card.click()
    page.wait_for_timeout(1800)
    [event] = [e for r in sent for e in r.post_data_json["events"]]
    assert event["metadata"]["list_id"] == list_id
    assert event["metadata"]["position"] == 2
    [(items,)] = wait_for_rows(
        site, f"SELECT items FROM recommendation_impressions WHERE id = '{list_id}'", 1
    )
    assert json.loads(items)[1][0] == event["target_id"]
    rows = wait_for_rows(
        site,
        "SELECT extra_data FROM user_interactions WHERE interaction_type='click'",
        1,
    )
    assert json.loads(rows[0][0])["list_id"] == list_id
