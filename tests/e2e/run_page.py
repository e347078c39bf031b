"""Finding and checking things on the run page in Chromium (tests/e2e/test_run_page_*.py).

NiceGUI's `.mark()` names do not reach the DOM: the steps component (run_steps.js) carries
`data-testid` hooks, and `#run-root` carries the run's live status.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from playwright.sync_api import Locator, Page, expect

from tests.integration.served import Server
from ui.components.run_steps import QUASAR_HEX
from ui.theme import STATUS_COLORS

CURRENT = re.compile(r"\brun-pill-current\b")


def open_run(page: Page, server: Server, run_id: int, query: str = "") -> Locator:
    """Open the run page and wait until it is usable (a card and the overview drawn); returns the
    sticky navigator."""
    page.goto(f"{server.base_url}/runs/{run_id}{query}")
    nav = page.get_by_test_id("step-nav")
    expect(nav).to_be_visible()
    page.wait_for_function(
        "document.querySelector('[data-testid^=card-header-]') !== null"
        " && document.querySelector('[data-testid=overview]').width > 0",
        timeout=30_000,
    )
    return nav


def card(page: Page, key: str) -> Locator:
    return page.get_by_test_id(f"card-{key}")


def pill(page: Page, key: str) -> Locator:
    return page.get_by_test_id(f"pill-{key}")


def body(page: Page, key: str) -> Locator:
    """The body of an open card (built by the server when the card is open and on screen)."""
    return card(page, key).locator(".run-card-body")


def box(locator: Locator) -> dict[str, float]:
    b = locator.bounding_box()
    assert b is not None, f"{locator} is not rendered"
    return {"x": b["x"], "y": b["y"], "width": b["width"], "height": b["height"]}


def settled_box(locator: Locator, timeout_s: float = 5.0) -> dict[str, float]:
    """The bounding box once it stops moving (the scroll after a jump, and again when the body arrives)."""
    deadline = time.monotonic() + timeout_s
    last = box(locator)
    still = 0
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = box(locator)
        still = still + 1 if now == last else 0
        if still >= 3:
            return now
        last = now
    raise AssertionError(f"{locator} kept moving for {timeout_s} s (last box {last})")


# True once the element's box and the window's scroll have not changed for `frames` animation frames in a row
# (evaluated at each frame: a slower machine draws its frames later, and waits as many of them).
STILL = """([el, frames]) => {
    const r = el.getBoundingClientRect();
    const now = [r.x, r.y, r.width, r.height, window.scrollX, window.scrollY].join();
    if (el.sdStillAt !== now) { el.sdStillAt = now; el.sdStillFor = 0; return false; }
    return ++el.sdStillFor >= frames;
}"""


def wait_still(page: Page, locator: Locator, frames: int = 10) -> None:
    """Wait until `locator` stops moving on screen (a jump's scroll has ended), frame by frame."""
    page.wait_for_function(STILL, arg=[locator.element_handle(), frames], polling="raf")


def topmost_inside(page: Page, locator: Locator, x: float, y: float) -> bool:
    """Whether the element drawn at viewport point (x, y) belongs to `locator` (nothing covers it there)."""
    handle = locator.element_handle()
    assert handle is not None
    result: Any = page.evaluate("([el, x, y]) => el.contains(document.elementFromPoint(x, y))", [handle, x, y])
    return bool(result)


def assert_card_in_view(page: Page, nav: Locator, key: str) -> None:
    """The card's header is on screen, below the sticky navigator and not covered by anything."""
    header = page.get_by_test_id(f"card-header-{key}")
    head = settled_box(header)
    bar = box(nav)
    height = page.viewport_size["height"] if page.viewport_size else 0
    assert bar["y"] + bar["height"] <= head["y"] + 1, f"the header of {key} {head} is under the navigator {bar}"
    assert head["y"] + head["height"] <= height, f"the header of {key} {head} is below the viewport ({height} px)"
    assert topmost_inside(page, header, head["x"] + 40, head["y"] + head["height"] / 2), f"{key}'s header is covered"


PILL_SHOWN = """(key) => {
    const pill = document.querySelector(`[data-testid="pill-${key}"]`);
    const strip = document.querySelector('[data-testid=pills]');
    if (!pill || !strip) return false;
    const p = pill.getBoundingClientRect(), s = strip.getBoundingClientRect();
    return p.width > 0 && p.left >= s.left - 1 && p.right <= s.right + 1;
}"""


def pill_shown(page: Page, key: str) -> bool:
    """Whether the pill is drawn and wholly inside the visible part of the pill strip."""
    return bool(page.evaluate(PILL_SHOWN, key))


def assert_current(page: Page, key: str) -> None:
    """The step the navigator marks as current: its pill is marked and scrolled into the strip, and the
    URL names it (a reload or a shared link comes back to it)."""
    expect(pill(page, key)).to_have_class(CURRENT)
    page.wait_for_function(PILL_SHOWN, arg=key)
    expect(page.locator(".run-pill-current")).to_have_count(1)
    expect(page).to_have_url(re.compile(rf"[?&]step={key}$"))


def assert_at_step(page: Page, nav: Locator, key: str) -> None:
    """The navigator landed on `key`: its step is current (`assert_current`) and its card in view
    (`assert_card_in_view`)."""
    assert_current(page, key)
    assert_card_in_view(page, nav, key)


def page_width(page: Page) -> int:
    """How wide the page's content is (more than the viewport means it scrolls sideways)."""
    width: int = page.evaluate("Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)")
    return width


# The colour of each cell of the overview strip, read from the canvas at the cell's centre. The strip
# lays the steps out in order on its lines (10 px each), `ceil(cells / lines)` to a line.
CELL_COLOURS = """(canvas) => {
    const n = Number(canvas.dataset.cells), lines = Math.round(canvas.height / 10);
    const perLine = Math.ceil(n / lines), w = canvas.width / perLine;
    const ctx = canvas.getContext('2d');
    const hex = (v) => v.toString(16).padStart(2, '0');
    const out = [];
    for (let i = 0; i < n; i++) {
        const d = ctx.getImageData(Math.floor((i % perLine) * w + w / 2), Math.floor(i / perLine) * 10 + 5, 1, 1).data;
        out.push('#' + hex(d[0]) + hex(d[1]) + hex(d[2]));
    }
    return out;
}"""


def colour(status: str) -> str:
    return QUASAR_HEX[STATUS_COLORS[status]]


def cell_statuses(page: Page) -> list[str]:
    """The status whose colour each cell of the overview strip is drawn in, in step order (a colour that is no
    status's stays its hex)."""
    by_colour = {colour(status): str(status) for status in STATUS_COLORS}
    assert len(by_colour) == len(STATUS_COLORS), "two statuses share a colour: a cell's colour would not name one"
    return [
        by_colour.get(hex_colour, hex_colour) for hex_colour in page.get_by_test_id("overview").evaluate(CELL_COLOURS)
    ]


# The contrast ratio (WCAG) between an element's text colour and the background it is drawn on.
CONTRAST = """([text, back]) => {
    const rgb = (el, prop) => {
        for (let e = el; e; e = e.parentElement) {
            const m = getComputedStyle(e)[prop].match(/[\\d.]+/g).map(Number);
            if (m.length < 4 || m[3] > 0) return m.slice(0, 3);
        }
        return [255, 255, 255];
    };
    const lum = ([r, g, b]) => {
        const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
        return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const a = lum(rgb(text, 'color')), b = lum(rgb(back, 'backgroundColor'));
    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
}"""


def contrast(page: Page, text: Locator, back: Locator) -> float:
    """How well `text` reads on `back` (1: invisible, 4.5: body text, 21: black on white)."""
    ratio: float = page.evaluate(CONTRAST, [text.element_handle(), back.element_handle()])
    return ratio


def epoch_s(stored: str) -> float:
    return datetime.fromisoformat(stored).timestamp()


def screenshot(page: Page, directory: Path, name: str) -> Path:
    path = directory / name
    page.screenshot(path=str(path))
    assert path.is_file() and path.stat().st_size > 0, f"no screenshot at {path}"
    return path


def gate_dir(tmp_path: Path) -> Path:
    gates = tmp_path / "gates"
    gates.mkdir()
    return gates


def open_gated_run(page: Page, server: Server, tmp_path: Path, workflow: str, *running: str) -> tuple[int, Path]:
    """Start `workflow`, whose steps wait for files in a gate folder, wait until the `running` steps run, and open
    the run's page: the test then touches the gates to watch the page change live. Returns the run id and the
    gate folder."""
    gates = gate_dir(tmp_path)
    run_id = server.start_run(workflow, {"gate_dir": str(gates)})
    for key in running:
        server.wait_step(run_id, key, "running")
    open_run(page, server, run_id)
    return run_id, gates
