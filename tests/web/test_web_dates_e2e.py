"""End to end: the page's date range (From, To) in headless Chromium narrows a search to the
photos taken in those days, To included, and the viewer shows when, with what and where."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipsearch import ImageIndex
from tests.helpers import save_photo
from tests.web.test_web_e2e import CHROMIUM, CHROMIUM_ARGS, server, sync_api  # noqa: F401

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no chromium"),
]
TAKEN = {
    "red": "2021:05:10 12:00:00",
    "green": "2022:03:01 12:00:00",
    "blue": "2022:03:31 12:00:00",
    "yellow": "2022:04:01 12:00:00",
}


@pytest.fixture
def index_dir(tmp_path, tiny_model) -> Path:
    photos = tmp_path / "photos"
    for color, taken in TAKEN.items():
        save_photo(photos / f"{color}.jpg", color, taken=taken, make="Canon", model="EOS R6")
    with ImageIndex.create(tmp_path / "index", model=tiny_model) as index:
        index.add([photos])
    return tmp_path / "index"


def test_the_date_range_narrows_the_search(server):  # noqa: F811
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.set_default_timeout(20_000)
            sync_api.expect.set_options(timeout=20_000)
            page.goto(server)
            sync_api.expect(page.locator("#info")).to_contain_text("4 images")
            page.locator("#q").fill("a photo")
            page.keyboard.press("Enter")
            thumbs = page.locator("#results button.thumb")
            sync_api.expect(thumbs).to_have_count(4)

            page.locator("#from").fill("2022-03-01")
            page.locator("#to").fill("2022-03-31")
            page.locator("#to").dispatch_event("change")
            sync_api.expect(thumbs).to_have_count(2)
            names = {Path(thumbs.nth(i).get_attribute("title")).name for i in range(2)}
            assert names == {"green.jpg", "blue.jpg"}
            assert "after=2022-03-01" in page.url and "before=2022-04-01" in page.url

            thumbs.first.click()
            meta = page.locator("#viewer-meta")
            sync_api.expect(meta).to_contain_text("taken 2022-03")
            sync_api.expect(meta).to_contain_text("Canon EOS R6")
            page.keyboard.press("Escape")

            page.reload()  # the range comes back from the address
            assert page.locator("#to").input_value() == "2022-03-31"
            sync_api.expect(thumbs).to_have_count(2)
        finally:
            browser.close()
