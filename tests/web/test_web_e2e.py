"""End to end: `clipsearch serve` in a subprocess, driven by headless Chromium through
Playwright. Type a query, see thumbnails, open one, find similar ones, filter by style, search
by a picked file, all with the keyboard where a user would use it.

Needs Debian's chromium (/usr/bin/chromium, or CLIPSEARCH_CHROMIUM) and the playwright package;
skipped with the reason when either is missing. `playwright install` is never needed.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from clipsearch import ImageIndex
from tests.helpers import draw_image, serving

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'"
)
CHROMIUM = os.environ.get("CLIPSEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(),
        reason=f"no chromium at {CHROMIUM}: apt-get install -y --no-install-recommends chromium",
    ),
]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
STYLES = ("photo", "sketch")
ALL_LOADED = (
    "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth)"
)
FULL_IMAGE = (
    "(img => img.src.endsWith('/file') && img.complete)(document.querySelector('#viewer-img'))"
)


def wait_until(page, expression: str, timeout: float = 20.0) -> None:
    """Poll a JavaScript expression until it is true (page.wait_for_function evaluates its
    predicate with eval(), which the page's Content-Security-Policy rightly forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {expression}")
        page.wait_for_timeout(100)


@pytest.fixture
def index_dir(tmp_path, tiny_model) -> Path:
    photos = tmp_path / "photos"
    for color in ["red", "green", "blue", "yellow"]:
        for shape in ["circle", "square", "triangle"]:
            draw_image(photos / f"{color}_{shape}.png", color, shape, size=96)
    with ImageIndex.create(tmp_path / "index", model=tiny_model) as index:
        index.add([photos])
        ids = sorted(int(i) for i in index.catalog.ids())
        index.catalog.set_styles([(i, STYLES[n % 2], 0.9) for n, i in enumerate(ids)])
    return tmp_path / "index"


@pytest.fixture
def server(index_dir):
    """The URL of `clipsearch serve --port 0` on the index; stopped afterwards."""
    with serving(index_dir) as address:
        yield address.group(1)


def test_search_open_and_find_similar_in_a_browser(server, index_dir, tmp_path):
    requests: list[str] = []
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.set_default_timeout(20_000)
            sync_api.expect.set_options(timeout=20_000)  # the first search loads the model
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.goto(server)
            sync_api.expect(page.locator("#info")).to_contain_text("12 images")

            # Type a query: a grid of thumbnails with scores and styles.
            page.locator("#q").fill("a red circle")
            page.keyboard.press("Enter")
            thumbs = page.locator("#results button.thumb")
            sync_api.expect(thumbs).to_have_count(12)
            wait_until(page, ALL_LOADED)
            sync_api.expect(page.locator("#status")).to_contain_text("12 images for")
            assert re.fullmatch(r"-?\d\.\d{3}", thumbs.first.locator(".score").inner_text())
            assert thumbs.first.locator(".tag").inner_text() in STYLES
            assert "q=a+red+circle" in page.url
            page.screenshot(path=tmp_path / "grid.png")

            # Keyboard: focus a thumbnail, Enter opens it large, Escape closes it.
            thumbs.nth(1).focus()
            page.keyboard.press("ArrowRight")
            page.keyboard.press("Enter")
            viewer = page.locator("#viewer")
            sync_api.expect(viewer).to_have_attribute("open", "")
            third = thumbs.nth(2).get_attribute("title")
            sync_api.expect(page.locator("#viewer-path")).to_have_text(third)
            page.keyboard.press("Escape")
            sync_api.expect(viewer).not_to_have_attribute("open", "")
            assert page.evaluate("document.activeElement.title") == third

            # Click one, see it with its path, then find similar ones.
            source_style = thumbs.nth(0).locator(".tag").inner_text()
            thumbs.nth(0).click()
            sync_api.expect(viewer).to_have_attribute("open", "")
            path = page.locator("#viewer-path").inner_text()
            assert Path(path).name.endswith(".png")
            wait_until(page, FULL_IMAGE)
            page.screenshot(path=tmp_path / "viewer.png")
            page.locator("#find-similar").click()
            sync_api.expect(page.locator("#status")).to_contain_text(
                f"11 images like {Path(path).name}"
            )
            sync_api.expect(thumbs).to_have_count(11)
            assert path not in [thumbs.nth(i).get_attribute("title") for i in range(11)]
            assert "similar=" in page.url
            wait_until(page, ALL_LOADED)
            page.screenshot(path=tmp_path / "similar.png")

            # The style filter and k selector re-run the search.
            page.locator("#style").select_option("sketch")
            sync_api.expect(thumbs).to_have_count(5 if source_style == "sketch" else 6)
            assert set(page.locator("#results .tag").all_inner_texts()) == {"sketch"}
            page.locator("#style").select_option("")
            page.locator("#k").select_option("12")
            sync_api.expect(thumbs).to_have_count(11)

            # Search by a picked image file: the same picture comes first.
            picked = index_dir.parent / "photos" / "blue_square.png"
            page.locator("#file").set_input_files(picked)
            sync_api.expect(page.locator("#status")).to_contain_text("like blue_square.png")
            sync_api.expect(thumbs.first).to_have_attribute("title", str(picked))

            # A bad query shows the server's reason.
            page.locator("#q").fill("@/etc/passwd")
            page.keyboard.press("Enter")
            sync_api.expect(page.locator("#status.error")).to_contain_text("by its id")
            wait_until(page, ALL_LOADED)
            page.screenshot(path=tmp_path / "final.png", full_page=True)
        finally:
            browser.close()

    assert problems == [] or all("400" in p for p in problems), problems
    elsewhere = [u for u in requests if not u.startswith((server, "data:", "blob:"))]
    assert elsewhere == [], "the page made requests off this machine"
    assert (tmp_path / "grid.png").stat().st_size > 5_000


def test_api_docs_page_renders_from_this_server_alone(server):
    requests: list[str] = []
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.goto(server + "docs")
            sync_api.expect(page.locator(".info .title")).to_contain_text("clipsearch")
            operations = page.locator(".opblock-summary-path")
            sync_api.expect(operations.first).to_be_visible()
            paths = set(operations.all_inner_texts())
            assert {"/api/search", "/api/search/image", "/api/images/{image_id}/similar"} <= {
                p.replace("\u200b", "") for p in paths
            }, paths

            # Try the search with its first documented example (docs.js opens "Try it out"):
            # the server answers 200 with results.
            search = page.locator("#operations-default-search_api_search_get")
            search.locator(".opblock-summary").click()
            search.locator(".execute").click()
            sync_api.expect(
                search.locator(".live-responses-table td.response-col_status:not(.col_header)")
            ).to_contain_text("200")
            sync_api.expect(search.locator(".live-responses-table")).to_contain_text('"count"')
        finally:
            browser.close()
    assert problems == [], problems
    elsewhere = [u for u in requests if not u.startswith((server, "data:", "blob:"))]
    assert elsewhere == [], elsewhere
