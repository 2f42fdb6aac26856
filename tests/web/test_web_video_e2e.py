"""End to end in Chromium: a video result shows its frame's time, and the large view plays
the video from that time (the page's Content-Security-Policy lets it load)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipsearch import ImageIndex
from tests.helpers import draw_image, make_video, shape_image
from tests.web.test_web_e2e import CHROMIUM, CHROMIUM_ARGS, server, sync_api, wait_until

pytest.importorskip("av")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no chromium at {CHROMIUM}"),
]
__all__ = ["server"]  # the fixture, over this module's index_dir


@pytest.fixture
def index_dir(tmp_path, tiny_model) -> Path:
    photos = tmp_path / "photos"
    make_video(photos / "holiday.webm", codec="libvpx-vp9")  # a codec Chromium plays
    draw_image(photos / "yellow.png", "yellow", "circle")
    with ImageIndex.create(tmp_path / "index", model=tiny_model) as index:
        index.add([photos], video_interval=2.0)
    return tmp_path / "index"


def test_a_video_result_plays_from_its_frame(server, index_dir, tmp_path):
    query = tmp_path / "green.png"
    shape_image("green", "square").save(query)
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            sync_api.expect.set_options(timeout=60_000)  # the first search loads the model
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.goto(server)
            page.locator("input[type=file]").first.set_input_files(str(query))
            first = page.locator("#results button.thumb").first
            sync_api.expect(first.locator(".tag").first).to_have_text("▶ 0:04")
            first.click()
            video = page.locator("#viewer-video")
            sync_api.expect(video).to_be_visible()
            sync_api.expect(page.locator("#viewer-img")).to_be_hidden()
            assert video.get_attribute("src").endswith("/file#t=4")
            wait_until(page, "document.querySelector('#viewer-video').readyState >= 1")
            assert page.evaluate("document.querySelector('#viewer-video').currentTime") == 4
        finally:
            browser.close()
    assert problems == []
