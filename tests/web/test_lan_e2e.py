"""End to end on a home network: `clipsearch serve --host 0.0.0.0` in a subprocess, driven by
headless Chromium. The printed address with its token sets the cookie and leaves the address
bar without the token; the page then works. On phone-sized screens nothing scrolls sideways,
thumbnails come two or more a row, touch targets are 44 px, and the large view swipes.

Needs Debian's chromium and the playwright package, as tests/web/test_web_e2e.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clipsearch import ImageIndex
from tests.helpers import draw_image, serving
from tests.web.test_web_e2e import ALL_LOADED, CHROMIUM, CHROMIUM_ARGS, sync_api, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no chromium at {CHROMIUM}"),
]
NO_OVERFLOW = "document.documentElement.scrollWidth <= window.innerWidth"
PHONES = [(360, 740), (390, 844), (430, 932)]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_model) -> Path:
    tmp = tmp_path_factory.mktemp("lan-e2e")
    photos = tmp / "photos"
    for color in ["red", "green", "blue", "yellow"]:
        for shape in ["circle", "square", "triangle"]:
            draw_image(photos / f"{color}_{shape}.png", color, shape, size=96)
    with ImageIndex.create(tmp / "index", model=tiny_model) as index:
        index.add([photos])
    return tmp / "index"


@pytest.fixture(scope="module")
def lan_server(index_dir) -> Iterator[tuple[str, str]]:
    """`clipsearch serve --host 0.0.0.0 --port 0`: its address (reached through 127.0.0.1)
    and the token it made up and printed."""
    token = r"at (http://127\.0\.0\.1:\d+/)\?token=([\w-]+) "
    with serving(index_dir, "--host", "0.0.0.0", address=token) as address:
        yield address.group(1), address.group(2)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def search(page, query: str, count: int) -> None:
    page.locator("#q").fill(query)
    page.locator("#q").press("Enter")
    sync_api.expect(page.locator("#results button.thumb")).to_have_count(count)
    wait_until(page, ALL_LOADED)


def test_the_address_with_the_token_sets_the_cookie_and_leaves_the_address_bar(
    lan_server, browser, tmp_path
):
    base, token = lan_server
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        sync_api.expect.set_options(timeout=20_000)
        # without the token: the login page, and nothing of the index
        answer = page.goto(base)
        assert answer.status == 401
        sync_api.expect(page.locator("input[name=token]")).to_be_visible()
        assert page.locator("#results").count() == 0
        # the printed address: the page, its address without the token, an HttpOnly cookie
        page.goto(f"{base}?token={token}")
        sync_api.expect(page.locator("#info")).to_contain_text("12 images")
        assert page.url == base and "token" not in page.evaluate("location.href")
        cookies = {c["name"]: c for c in context.cookies()}
        port = base.rsplit(":", 1)[1].strip("/")
        cookie = cookies[f"clipsearch_token_{port}"]
        assert cookie["value"] == token and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # the page's scripts never see it
        search(page, "a red circle", 12)
        page.locator("#results button.thumb").first.click()
        sync_api.expect(page.locator("#viewer")).to_have_attribute("open", "")
        page.screenshot(path=tmp_path / "lan.png")
    finally:
        context.close()
    # the login form does the same for a token typed in
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(base)
        page.locator("input[name=token]").fill(token)
        page.locator("input[name=token]").press("Enter")
        sync_api.expect(page.locator("#info")).to_contain_text("12 images")
        assert page.url == base
    finally:
        context.close()


def touch_targets_under_44px(page) -> list[str]:
    return page.evaluate(
        """[...document.querySelectorAll('button, select, input:not([hidden]), summary, .viewer a')]
        .filter(e => e.offsetParent !== null || e.closest('dialog[open]'))
        .filter(e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; })
        .filter(e => e.getBoundingClientRect().height < 44 && !e.closest('.thumb'))
        .map(e => (e.id || e.name || e.tagName) + ':' + e.getBoundingClientRect().height)"""
    )


def swipe(page, dx: int) -> None:
    """A finger moving sideways over the large image (pointer events, as a phone sends)."""
    page.evaluate(
        """dx => {
        const img = document.querySelector('#viewer-img');
        const r = img.getBoundingClientRect();
        const y = r.top + r.height / 2, x = r.left + r.width / 2 - dx / 2;
        const at = (type, x) => img.dispatchEvent(new PointerEvent(type, {
            bubbles: true, pointerId: 7, pointerType: 'touch', isPrimary: true,
            clientX: x, clientY: y}));
        at('pointerdown', x); at('pointermove', x + dx / 2); at('pointerup', x + dx);
        }""",
        dx,
    )


@pytest.mark.parametrize("width,height", PHONES)
def test_the_page_fits_a_phone(lan_server, browser, tmp_path, width, height):
    base, token = lan_server
    context = browser.new_context(
        viewport={"width": width, "height": height},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
    )
    problems: list[str] = []
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"{base}?token={token}")
        sync_api.expect(page.locator("#info")).to_contain_text("12 images")
        assert page.evaluate(NO_OVERFLOW), page.evaluate("document.documentElement.scrollWidth")
        search(page, "a blue square", 12)
        page.locator("#refine summary").click()
        assert page.evaluate(NO_OVERFLOW), page.evaluate("document.documentElement.scrollWidth")
        for name in ("pick", "shoot", "dups"):  # every button of the bar is on the screen
            box = page.locator(f"#{name}").bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, name
        assert page.locator("#camera").get_attribute("capture") == "environment"
        assert page.locator("#camera").get_attribute("accept") == "image/*"
        assert page.locator("#file").get_attribute("accept") == "image/*"
        # two or more thumbnails a row
        tops = page.evaluate(
            "[...document.querySelectorAll('#results button.thumb')].map(b => "
            "Math.round(b.getBoundingClientRect().top))"
        )
        assert tops.count(tops[0]) >= 2, tops
        assert touch_targets_under_44px(page) == []
        page.screenshot(path=tmp_path / f"phone-{width}.png")

        # the large view: it fits too, and a swipe goes to the next and previous results
        thumbs = page.locator("#results button.thumb")
        titles = [thumbs.nth(i).get_attribute("title") for i in range(3)]
        thumbs.nth(1).click()
        path = page.locator("#viewer-path")
        sync_api.expect(path).to_have_text(titles[1])
        page.screenshot(path=tmp_path / f"phone-{width}-viewer.png")
        assert page.evaluate(NO_OVERFLOW)
        assert touch_targets_under_44px(page) == []
        swipe(page, -150)  # to the left: the next one
        sync_api.expect(path).to_have_text(titles[2])
        swipe(page, 150)
        swipe(page, 150)
        sync_api.expect(path).to_have_text(titles[0])
        swipe(page, 20)  # a short move is no swipe
        swipe(page, 150)  # and there is nothing before the first
        sync_api.expect(path).to_have_text(titles[0])
    finally:
        context.close()
    assert problems == [], problems
