"""End to end: the page's Duplicates view in headless Chromium (see test_web_e2e.py for what
it needs; skipped with the reason when that is missing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipsearch import ImageIndex
from tests.helpers import draw_near_duplicates
from tests.web.test_web_e2e import (  # noqa: F401  (server is a fixture)
    ALL_LOADED,
    CHROMIUM,
    CHROMIUM_ARGS,
    server,
    sync_api,
    wait_until,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no chromium at {CHROMIUM}"),
]


@pytest.fixture
def photos(tmp_path) -> dict[str, Path]:
    return draw_near_duplicates(tmp_path / "photos")


@pytest.fixture
def index_dir(tmp_path, photos) -> Path:
    with ImageIndex.create(tmp_path / "index", model="demo") as index:
        index.add([tmp_path / "photos"])
    return tmp_path / "index"


def test_duplicates_view_shows_groups_keep_first(server, photos, tmp_path):  # noqa: F811
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.set_default_timeout(20_000)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(server)
            sync_api.expect(page.locator("#info")).to_contain_text("10 images")
            page.locator("#dups").click()
            sync_api.expect(page.locator("#status")).to_contain_text("2 groups of near-duplicates")
            heads = page.locator("#results .group-head")
            sync_api.expect(heads).to_have_count(2)
            sync_api.expect(heads.first).to_contain_text("5 images · similar")
            thumbs = page.locator("#results button.thumb")
            sync_api.expect(thumbs).to_have_count(7)
            wait_until(page, ALL_LOADED)
            assert thumbs.first.get_attribute("title") == str(photos["base"].resolve())
            assert thumbs.first.locator(".score").inner_text() == "keep"
            assert "duplicates=1" in page.url
            page.screenshot(path=tmp_path / "duplicates.png")
            thumbs.nth(1).click()  # the viewer opens on a member
            sync_api.expect(page.locator("#viewer-path")).to_have_text(
                str(photos["jpeg"].resolve())
            )
        finally:
            browser.close()
    assert not problems
