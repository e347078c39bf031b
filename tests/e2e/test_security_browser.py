"""Security in real Chromium: hostile text in step outputs and run inputs stays inert, and signing in
through the form leads to a live page and back out.

The XSS test starts runs whose inputs and step outputs carry script, event-handler, `javascript:`
and remote-resource payloads, opens every place that shows them, clicks what they render, and
checks that nothing ran (no `window.__pwned`, no dialog, no console line from a payload) and that a
"remote host" (a recording HTTP server on another port, so another origin) received no request.
A control visit proves that Chromium can reach that server when nothing stops it. The runs list shows
no inputs (it only searches them): it is opened with a search for a payload.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Dialog, Page, expect
from playwright.sync_api import Error as PlaywrightError

from tests.e2e.conftest import DESKTOP, E2E_STEPS, GATED_TRIO, new_page
from tests.integration.served import Server, Workspace, serving

PASSWORD = "correct horse battery staple"
# 1x1 transparent PNG: what the remote host would serve.
PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)  # The control visit: a page that loads an image from its host (and asks for no favicon, which could come late).
CONTROL_PAGE = b'<!doctype html><link rel="icon" href="data:,"><img src="/control-pixel.png">'

XSS_STEPS = '''
"""Step functions that hand their input text (and payloads built from it) back as output."""


def echo(ctx):
    return ctx.inputs["text"]


def as_json(ctx):
    return {"text": ctx.inputs["text"], "remote": ctx.inputs["remote"]}


def payload_alternatives(ctx):
    remote = ctx.inputs["remote"]
    return [
        f"Alternative one ![alt pixel]({remote}/alt-pixel.png) <script>window.__pwned=11</script>",
        '<img src=x onerror="window.__pwned=12;console.log(\\'stepdeck-pwned-12\\');alert(12)"> alternative two',
        f"[alt link](javascript:window.__pwned=13) <iframe src=\\"{remote}/alt-frame.html\\"></iframe> three",
    ][: ctx.alternatives]


def explode(ctx):
    ctx.log(ctx.inputs["text"])
    raise ValueError(ctx.inputs["text"])
'''

XSS_WORKFLOW = """
name: xss
inputs:
  text:
    type: string
  remote:
    type: string
steps:
  - key: echo
    label: Echo
    call: xss_steps:echo
  - key: data
    label: Data
    call: xss_steps:as_json
    needs: []
  - key: alts
    label: Alternatives
    call: xss_steps:payload_alternatives
    alternatives: 3
    select: human
    needs: []
  - key: boom
    label: Boom
    call: xss_steps:explode
    needs: []
"""

# Run as the page loads: records what the Content-Security-Policy blocked (to wait on, and to see it work).
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener('securitypolicyviolation',
    (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));
"""


def payload(remote: str) -> str:
    """Markdown with every payload; the marker lines prove it reached the page."""
    return f"""Payload start marker

<script>window.__pwned=1</script>
<script>console.log("stepdeck-pwned-1b"); alert("1b")</script>

<img src=x onerror="window.__pwned=2">
<img src=y onerror="console.log('stepdeck-pwned-2b'); alert('2b')">

[click me](javascript:window.__pwned=3)

![remote pixel]({remote}/pixel.png)

<iframe src="{remote}/frame.html"></iframe>

<a href="javascript:window.__pwned=5;alert(5)">javascript anchor</a>

<svg onload="window.__pwned=6"></svg>
<details open ontoggle="window.__pwned=7"><summary>toggle me</summary>hidden</details>
<div style="background-image: url({remote}/style.png)">styled block</div>
<form action="{remote}/form" method="get"><button type="submit">submit form</button></form>

Payload end marker"""


# --- the "remote host" ----------------------------------------------------------------------------------


@dataclass
class RemoteHost:
    url: str
    requests: list[str] = field(default_factory=list)


class _Recorder(BaseHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        self._record()

    def do_POST(self) -> None:
        self._record()

    def _record(self) -> None:
        self.requests.append(f"{self.command} {self.path}")
        body, kind = (CONTROL_PAGE, "text/html") if self.path == "/control" else (PIXEL, "image/png")
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def remote() -> Iterator[RemoteHost]:
    """A tiny HTTP server on another port (another origin) that records every request it gets."""
    seen: list[str] = []
    handler = type("Recorder", (_Recorder,), {"requests": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, name="remote-host", daemon=True)
    thread.start()
    try:
        yield RemoteHost(f"http://127.0.0.1:{httpd.server_address[1]}", seen)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --- servers ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xss_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    ws = Workspace(tmp_path_factory.mktemp("xss"), workflows={"xss": XSS_WORKFLOW}, modules={"xss_steps": XSS_STEPS})
    with serving(ws) as served:
        yield served


@dataclass
class Watched:
    """A page with everything a payload could leave behind recorded."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def pwned(self) -> Any:
        return self.page.evaluate("window.__pwned")

    def payload_traces(self) -> list[str]:
        return [m for m in self.console + self.errors if "pwned" in m]

    def violations(self) -> list[str]:
        """What the Content-Security-Policy blocked on the current page ("directive URL")."""
        try:
            found: list[str] = self.page.evaluate("window.__violations || []")
        except PlaywrightError:  # the page is navigating away (then the remote host tells)
            return []
        return found


@pytest.fixture
def desktop(shared_context: BrowserContext) -> Iterator[Page]:
    yield from new_page(shared_context, DESKTOP)


@pytest.fixture
def watched(desktop: Page) -> Watched:
    page = desktop
    page.add_init_script(RECORD_VIOLATIONS)
    seen = Watched(page)

    def on_dialog(dialog: Dialog) -> None:
        seen.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_console(message: ConsoleMessage) -> None:
        seen.console.append(f"{message.type}: {message.text}")

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    page.on("pageerror", lambda exc: seen.errors.append(str(exc)))
    return seen


def wait_until(check: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def click_rendered_links(page: Page) -> int:
    """Click every link the markdown of the page rendered (as a curious person would); returns how many."""
    links = page.locator(".nicegui-markdown a")
    count = links.count()
    for i in range(count):
        links.nth(i).click()
    return count


# --- tests -------------------------------------------------------------------------------------------------


def test_payloads_in_outputs_and_inputs_render_inert(
    watched: Watched, xss_server: Server, remote: RemoteHost, artifacts: Path
) -> None:
    page = watched.page
    # Control: nothing keeps Chromium from that host, so "no request" below means something.
    page.goto(f"{remote.url}/control")
    wait_until(lambda: "GET /control-pixel.png" in remote.requests, "the control page's image to be requested")
    page.goto("about:blank")
    remote.requests.clear()

    text = payload(remote.url)
    run_id = xss_server.start_run("xss", {"text": text, "remote": remote.url})
    for key, status in (("echo", "completed"), ("data", "completed"), ("alts", "waiting"), ("boom", "failed")):
        xss_server.wait_step(run_id, key, status)

    page.goto(f"{xss_server.base_url}/runs/{run_id}")
    expect(page.get_by_test_id("step-nav")).to_be_visible()
    page.get_by_test_id("expand-all").click()

    echo_card = page.get_by_test_id("card-echo")
    expect(echo_card.locator(".nicegui-markdown")).to_contain_text("Payload end marker")
    expect(echo_card.get_by_text("click me")).to_be_visible()
    expect(echo_card.get_by_text("styled block")).to_be_visible()
    # The JSON output, the failure's message and its log show the payload as text.
    data_card = page.get_by_test_id("card-data")
    expect(data_card).to_contain_text("<script>window.__pwned=1</script>")
    boom_card = page.get_by_test_id("card-boom")
    expect(boom_card).to_contain_text("<script>window.__pwned=1</script>")
    boom_card.get_by_role("button", name=re.compile("Traceback")).click()
    expect(boom_card.locator(".nicegui-code").filter(has_text="ValueError")).to_contain_text("onerror=")

    # Every alternative, and the side-by-side comparison (a diff table of the raw texts).
    alts_card = page.get_by_test_id("card-alts")
    for label, shows in (("Alternative 1", "Alternative one"), ("Alternative 2", "alternative two")):
        alts_card.get_by_role("tab", name=re.compile(label)).click()
        expect(alts_card.locator(".q-tab-panel .nicegui-markdown").filter(has_text=shows)).to_be_visible()
    alts_card.get_by_role("tab", name=re.compile("Alternative 3")).click()
    expect(alts_card.get_by_text("alt link")).to_be_visible()
    alts_card.get_by_text("Compare alternatives").click()
    diff = alts_card.locator(".sd-diff")
    expect(diff).to_contain_text('onerror="window.__pwned=12')  # as text: the word diff escapes
    expect(diff.locator("img, script, iframe")).to_have_count(0)

    # The run header's inputs: the JSON of the inputs, payloads as text.
    page.get_by_text("Inputs", exact=True).click()
    inputs = page.locator(".q-expansion-item", has=page.get_by_text("Inputs", exact=True)).locator(".nicegui-code")
    expect(inputs).to_contain_text("<script>window.__pwned=1</script>")
    expect(inputs).to_contain_text("[click me](javascript:window.__pwned=3)")

    rendered = page.locator(".nicegui-markdown")
    active = "script, iframe, object, embed, [onerror], [onload], [ontoggle], [href^='javascript' i]"
    expect(rendered.locator(active)).to_have_count(0)
    clicked = click_rendered_links(page)
    assert clicked >= 2, f"only {clicked} rendered links to click: did the markdown render?"
    alts_card.get_by_role("tab", name=re.compile("Alternative 3")).click()
    alts_card.get_by_text("alt link").click()
    echo_card.get_by_text("toggle me").click()
    # The browser tried the remote images: either the policy stopped them or the remote host got them.
    wait_until(
        lambda: remote.requests or sum(f"{remote.url}/" in v and "img-src" in v for v in watched.violations()) >= 2,
        "the remote images to be requested or blocked by img-src",
    )
    assert remote.requests == [], f"the page contacted the remote host: {remote.requests}"
    # A form that posts elsewhere (phishing) is not rendered at all: its text stays, no form or control.
    expect(echo_card.get_by_text("submit form")).to_be_visible()
    expect(echo_card.locator(".nicegui-markdown").locator("form, input, button, textarea, select")).to_have_count(0)
    # Nothing in an output can position or restyle itself outside its box.
    expect(rendered.locator("[style]")).to_have_count(0)
    assert remote.requests == [], f"the page contacted the remote host: {remote.requests}"
    page.screenshot(path=str(artifacts / "xss-run-page.png"), full_page=True)
    assert watched.pwned() is None, f"a payload ran on the run page: window.__pwned = {watched.pwned()!r}"

    # The runs list: found by the payload text, and still nothing runs.
    page.goto(xss_server.base_url + "/")
    search = page.get_by_label("Search")
    search.fill("<script>window.__pwned=1</script>")
    expect(page.locator("table a", has_text=f"#{run_id}")).to_be_visible()
    expect(page.locator("tbody tr")).to_have_count(1)

    assert watched.pwned() is None, f"a payload ran on the runs page: window.__pwned = {watched.pwned()!r}"
    assert watched.dialogs == [], f"a payload opened dialogs: {watched.dialogs}"
    assert watched.payload_traces() == [], f"console lines from payloads: {watched.payload_traces()}"
    assert page.url.startswith(xss_server.base_url), f"a payload navigated away to {page.url}"
    assert remote.requests == [], f"the remote host was contacted: {remote.requests}"


@pytest.fixture
def signed_server(tmp_path: Path) -> Iterator[Server]:
    """A served Stepdeck with an operator account `alice` (so sign-in is on); its client sends her token."""
    ws = Workspace(tmp_path / "signed", workflows={"gated-trio": GATED_TRIO}, modules={"e2e_steps": E2E_STEPS})
    ws.add_user("alice", PASSWORD)
    token = ws.add_token("alice", "e2e")
    with serving(ws) as served:
        served.client.headers["Authorization"] = f"Bearer {token}"
        yield served


def test_sign_in_through_the_form_leads_to_a_live_page_and_sign_out_locks_it_again(
    signed_server: Server, desktop: Page, tmp_path: Path, artifacts: Path
) -> None:
    server = signed_server
    gate_dir = tmp_path / "gates"
    gate_dir.mkdir()
    run_id = server.start_run("gated-trio", {"gate_dir": str(gate_dir)})
    server.wait_step(run_id, "bravo", "running")
    page = desktop
    page.goto(f"{server.base_url}/runs/{run_id}")
    expect(page).to_have_url(f"{server.base_url}/login?next=/runs/{run_id}")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    expect(page.get_by_text("Expand all")).to_have_count(0)
    page.screenshot(path=str(artifacts / "login-page.png"))
    assert (artifacts / "login-page.png").stat().st_size > 0

    page.get_by_label("Name").fill("alice")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong name or password.")
    page.screenshot(path=str(artifacts / "login-page-error.png"))

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{server.base_url}/runs/{run_id}")
    header = page.locator(".q-header")
    expect(header).to_contain_text("alice · operator")
    bravo = page.get_by_test_id("pill-bravo")
    expect(bravo).to_have_attribute("data-status", "running")
    page.evaluate("window.stepdeckNoReload = true")

    (gate_dir / "bravo").touch()  # the step completes; only the websocket can tell the page

    expect(bravo).to_have_attribute("data-status", "completed")
    run_header = page.locator(".q-card", has_text=f"Run {run_id}").first
    expect(run_header.locator(".q-badge").first).to_have_text("completed")
    expect(page.locator("#run-root")).to_have_attribute("data-run-status", "completed")
    assert page.evaluate("window.stepdeckNoReload === true"), "the page was reloaded"

    header.locator("button", has_text="logout").click()  # the "Sign out" button (its icon's name)
    expect(page).to_have_url(f"{server.base_url}/login")
    page.goto(f"{server.base_url}/")
    expect(page).to_have_url(f"{server.base_url}/login")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    page.goto(f"{server.base_url}/runs/{run_id}")
    expect(page).to_have_url(f"{server.base_url}/login?next=/runs/{run_id}")
