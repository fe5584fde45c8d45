"""The playground in a real browser: Debian's Chromium, headless, driven by Playwright, against
the real service (uvicorn on a free port). Every test checks that the page logged no console
error and that no request left the machine (every non-loopback URL is blocked and recorded).

Screenshots go to ``$LRS_TEST_ARTIFACTS`` (default ``test-artifacts/``) as test artifacts.
"""

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

CHROMIUM = os.environ.get("LRS_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("LRS_TEST_ARTIFACTS", "test-artifacts"))
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


@pytest.fixture(scope="module")
def browser():
    # Never skipped: without Chromium this fails (make test installs it).
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make browser` (apt-get chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


def _with_a_new_family(route):
    """Answer GET /v1/schedulers with the real catalog plus a family entry built as the catalog
    builds one (timm's spec model's own JSON Schema), as if the family had just landed."""
    from service.schedules.families.timm import TimmScheduler

    catalog = route.fetch().json()
    catalog["schedulers"].append(
        {
            "type": "timm",
            "torch_class": "timm.scheduler.create_scheduler_v2",
            "description": "timm's schedulers",
            "parameters": TimmScheduler.model_json_schema(),
            "defaults": {},
            "required": [],
            "example": {
                "scheduler": {"type": "timm", "sched": "cosine", "num_epochs": 10},
                "steps": 100,
            },
        }
    )
    route.fulfill(json=catalog)


class Watched:
    """Pages of one browser context (so plotly.js is fetched once), with every console error
    and every attempted non-loopback request."""

    def __init__(self, browser, base_url: str):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
        self.errors: list[str] = []
        self.external: list[str] = []
        self.context.route("**/*", self._route)
        self.base_url = base_url
        self.page = None

    def _route(self, route):
        url = route.request.url
        if urlsplit(url).hostname in LOOPBACK or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.external.append(url)
            route.abort()

    def new_page(self, width: int = 1280):
        page = self.context.new_page()
        page.set_viewport_size({"width": width, "height": 900})
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        return page

    def shared(self, width: int = 1280):
        """Return the module's one loaded page, back at its default state (loading plotly.js
        takes seconds on a busy machine; tests that need a fresh load open their own page).
        Its catalog has one family more than the service's (see _with_a_new_family)."""
        if self.page is None or self.page.is_closed():
            self.page = self.new_page(width)
            self.page.route("**/v1/schedulers", _with_a_new_family)
            self.page.goto(self.base_url + "/")
        else:
            self.page.set_viewport_size({"width": width, "height": 900})
            self.page.evaluate("if (location.hash.length > 1) location.hash = ''")
        settle(self.page)
        return self.page


def settle(page):
    """Wait until every change on the page has been computed and drawn."""
    page.wait_for_function("document.documentElement.dataset.busy === 'false'", timeout=20_000)


@pytest.fixture(scope="module")
def pages(browser, live_server):
    watched = Watched(browser, live_server)
    yield watched
    watched.context.close()


@pytest.fixture
def w(pages):
    """The module's browser context; after the test, no console error and no external request."""
    yield pages
    errors, external = list(pages.errors), list(pages.external)
    pages.errors.clear()
    pages.external.clear()
    for page in pages.context.pages:
        if page is not pages.page:
            page.close()
    assert errors == [], errors
    assert external == [], f"requests left the machine: {external}"


def plotted(page) -> list[dict]:
    return page.evaluate(
        """() => document.getElementById('plot').data.map(t => ({
            name: t.name, x: Array.from(t.x), y: Array.from(t.y), yaxis: t.yaxis,
            color: t.line.color, legend: t.showlegend !== false}))"""
    )


def api(live_server: str, body: dict) -> dict:
    response = httpx.post(f"{live_server}/v1/schedules/compute", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def choose(page, scheduler: str):
    page.select_option("#family", "torch")
    page.select_option("#scheduler-type", label=scheduler)


def test_onecycle_on_adam_then_overlay_log_cursor_and_permalink(w, live_server):
    """The issue's walk-through: OneCycleLR with momentum on Adam, plotted as the API returns
    it; overlaid with CosineAnnealingLR after a linear warmup; log-y; the lr at step 500; a
    permalink that restores all of it."""
    page = w.shared()
    assert page.title() == "LR schedule playground"
    choose(page, "OneCycleLR")
    page.select_option("#optimizer-type", "Adam")
    page.check("#momentum")
    settle(page)
    with page.expect_request("**/v1/schedules/batch") as sent:
        page.fill("#f-scheduler-max_lr", "0.05")
        settle(page)
    (body,) = sent.value.post_data_json["requests"]
    assert body["scheduler"]["max_lr"] == 0.05
    assert body["optimizer"]["type"] == "Adam"
    expected = api(live_server, body)
    traces = plotted(page)
    lr = [t for t in traces if t["yaxis"] == "y"]
    momentum = [t for t in traces if t["yaxis"] == "y2"]
    assert len(lr) == len(momentum) == 1
    assert lr[0]["x"] == expected["steps"]
    assert lr[0]["y"] == expected["lr"][0]  # exactly the API's floats
    assert momentum[0]["y"] == expected["momentum"][0]  # Adam's beta1, cycled by OneCycleLR
    assert max(expected["lr"][0]) == pytest.approx(0.05)
    # the warnings beside the plot are the response's
    shown = page.locator("#warnings li").all_inner_texts()
    assert shown == expected["warnings"]

    page.click("#pin")
    settle(page)
    choose(page, "CosineAnnealingLR")
    page.fill("#f-steps", "1000")
    page.fill("#f-scheduler-T_max", "900")
    page.select_option("#warmup-type", "linear")
    page.fill("#f-warmup-steps", "100")
    settle(page)
    page.check("#logy")
    page.fill("#cursor-step", "500")
    settle(page)

    state = page.evaluate("window.playground.state")
    pinned, current = state["overlays"][0]["spec"], state["spec"]
    assert pinned["scheduler"]["type"] == "OneCycleLR"
    assert current["scheduler"]["type"] == "CosineAnnealingLR"
    assert current["warmup"] == {"type": "linear", "steps": 100}
    traces = [t for t in plotted(page) if t["legend"]]
    assert len(traces) == 2 and traces[0]["color"] != traces[1]["color"]
    assert page.evaluate("document.getElementById('plot').layout.yaxis.type") == "log"
    legend = page.eval_on_selector_all("#plot .legendtext", "els => els.map(e => e.textContent)")
    assert len(legend) == 2 and "OneCycleLR" in legend[0] and "CosineAnnealingLR" in legend[1]

    # the readout at step 500 is the API's lr (and momentum) at step 500, for both schedules
    rows = page.locator("#readout tbody tr")
    assert rows.count() == 2
    assert page.inner_text("#readout-step") == "500"
    for i, spec in enumerate((pinned, current)):
        at = api(live_server, {**spec, "sample": {"at": [500]}})
        lr = float(rows.nth(i).locator(".lr").inner_text())
        assert lr == pytest.approx(at["lr"][0][0], rel=1e-5)
    momentum = float(rows.nth(0).locator(".momentum").inner_text())
    assert 0.85 <= momentum <= 0.95

    page.click("#copy-permalink")
    link = page.input_value("#output")
    assert link.startswith(live_server + "/#")
    assert page.evaluate("navigator.clipboard.readText()") == link
    readout = rows.all_inner_texts()
    # with an overlay, the SVG download is the batch's overlay plot with both schedules
    with (
        page.expect_response("**/v1/schedules/batch?format=svg*") as answered,
        page.expect_download() as downloaded,
    ):
        page.click('[data-download="svg"]')
    assert answered.value.headers["content-type"].startswith("image/svg+xml")
    assert downloaded.value.suggested_filename == "overlay.svg"
    svg = Path(downloaded.value.path()).read_text()
    assert "0: OneCycleLR" in svg and "1: CosineAnnealingLR" in svg and "(log)" in svg
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground-1280.png"), full_page=True)

    # a fresh browser opening the link gets the same page back
    restored = w.new_page()
    restored.goto(link)
    settle(restored)
    assert restored.evaluate("window.playground.state") == state
    assert restored.is_checked("#logy") and restored.is_checked("#momentum")
    assert restored.input_value("#f-scheduler-T_max") == "900"
    assert restored.input_value("#warmup-type") == "linear"
    assert restored.input_value("#cursor-step") == "500"
    assert restored.locator("#readout tbody tr").all_inner_texts() == readout

    restored.set_viewport_size({"width": 390, "height": 900})
    restored.wait_for_function("document.getElementById('plot').clientWidth < 390")
    restored.wait_for_timeout(400)  # the redraw after a resize is debounced
    assert restored.evaluate("document.documentElement.scrollWidth") <= 390
    restored.screenshot(path=str(ARTIFACTS / "playground-390.png"), full_page=True)


def test_a_bad_value_shows_the_api_message_at_its_field(w, live_server):
    page = w.shared()
    choose(page, "OneCycleLR")
    settle(page)
    page.fill("#f-scheduler-pct_start", "2")
    settle(page)
    spec = page.evaluate("window.playground.state.spec")
    answered = httpx.post(f"{live_server}/v1/schedules/compute", json=spec)
    assert answered.status_code == 422
    (error,) = answered.json()["errors"]
    assert error["loc"] == ["body", "scheduler", "pct_start"]
    shown = page.inner_text('[data-error-for="scheduler.pct_start"]')
    assert shown == error["msg"] == "Input should be less than or equal to 1"
    assert page.get_attribute("#f-scheduler-pct_start", "aria-invalid") == "true"
    # fixing it clears the message
    page.fill("#f-scheduler-pct_start", "0.25")
    settle(page)
    assert page.inner_text('[data-error-for="scheduler.pct_start"]') == ""

    # a family the page has never seen gets its form from its JSON Schema alone
    page.select_option("#family", "timm")
    settle(page)
    assert page.input_value("#f-scheduler-num_epochs") == "10"
    assert page.get_attribute("#f-scheduler-warmup_lr", "placeholder") == "0.00001"
    assert page.locator("#f-scheduler-warmup_prefix").get_attribute("type") == "checkbox"
    with page.expect_request("**/v1/schedules/batch") as sent:
        page.fill("#f-scheduler-num_epochs", "20")
        settle(page)
    (body,) = sent.value.post_data_json["requests"]
    assert body["scheduler"] == {"type": "timm", "sched": "cosine", "num_epochs": 20}
    # whatever this service answers for it (a curve, or the API's problem at a field), the
    # page shows it
    legend = plotted(page)[0]["name"]
    problem = page.inner_text('[data-error-for="scheduler"]')
    if problem:  # the last curve that worked stays, under its own name
        assert "timm" not in legend and "OneCycleLR" in legend
    else:
        assert "timm" in legend


MAGIC = {"csv": b"step,", "npy": b"\x93NUMPY", "png": b"\x89PNG", "svg": b"<?xml"}
MEDIA = {"csv": "text/csv", "npy": "application/x-npy", "png": "image/png", "svg": "image/svg+xml"}


def test_downloads_and_copy_as_curl(w, live_server, tmp_path):
    page = w.shared()
    for fmt in ("csv", "npy", "png", "svg"):
        with (
            page.expect_response(f"**/v1/schedules/compute?format={fmt}*") as answered,
            page.expect_download() as downloaded,
        ):
            page.click(f'[data-download="{fmt}"]')
        assert answered.value.headers["content-type"].startswith(MEDIA[fmt])
        path = tmp_path / downloaded.value.suggested_filename
        downloaded.value.save_as(path)
        assert path.suffix == "." + fmt
        assert path.read_bytes().startswith(MAGIC[fmt])
    spec = page.evaluate("window.playground.state.spec")
    npy = np.load(tmp_path / f"{spec['scheduler']['type']}.npy")
    assert npy.tolist() == api(live_server, spec)["lr"]

    page.click("#copy-curl")
    command = page.input_value("#output")
    assert command.startswith(f"curl -s '{live_server}/v1/schedules/compute'")
    body = json.loads(command.split("-d '", 1)[1].rstrip("'"))
    assert body == spec
    # no export endpoint on this service yet: the button is left out
    has_export = "/v1/schedules/export" in httpx.get(f"{live_server}/openapi.json").json()["paths"]
    assert page.is_visible("#copy-code") == has_export


def test_copy_as_code_shows_and_copies_the_export_script(w, live_server):
    """ "Copy as code" asks /v1/schedules/export for the current spec and the chosen target, and
    shows (and copies) exactly the script the API returns; choosing a family points the target
    at its library; a target that cannot write the spec shows the API's message."""
    page = w.new_page()
    page.goto(live_server + "/")
    settle(page)
    targets = page.eval_on_selector_all("#export-target option", "os => os.map(o => o.value)")
    assert targets == ["torch", "lightning", "transformers", "timm", "optax", "megatron"]

    def copied(target: str) -> tuple[dict, str]:
        with page.expect_response(f"**/v1/schedules/export?target={target}") as answered:
            page.click("#copy-code")
        assert answered.value.status == 200
        spec = page.evaluate("window.playground.state.spec")
        expected = httpx.post(
            f"{live_server}/v1/schedules/export", params={"target": target}, json=spec, timeout=60
        )
        assert expected.status_code == 200, expected.text
        page.wait_for_function(
            "text => document.getElementById('output').value === text", arg=expected.text
        )
        assert page.evaluate("navigator.clipboard.readText()") == expected.text
        return spec, expected.text

    page.select_option("#export-target", "lightning")
    spec, text = copied("lightning")
    assert "def configure_optimizers(self):" in text
    assert f"lr_scheduler.{spec['scheduler']['type']}(optimizer" in text

    page.select_option("#family", "optax")
    settle(page)
    assert page.input_value("#export-target") == "optax"
    spec, text = copied("optax")
    assert spec["scheduler"]["type"] == "optax"
    assert f"optax.{spec['scheduler']['schedule']}(" in text

    page.select_option("#export-target", "timm")
    with page.expect_response("**/v1/schedules/export?target=timm") as answered:
        page.click("#copy-code")
    assert answered.value.status == 422
    page.wait_for_function(
        "document.getElementById('form-error').textContent.includes('targets that can')"
    )
    assert "the targets that can: optax" in page.inner_text("#form-error")
    # the browser logs the refused request itself; that is the answer shown, not a page error
    w.errors[:] = [e for e in w.errors if "status of 422" not in e]


def test_390px_wide_has_no_horizontal_overflow_and_controls_take_the_keyboard(w):
    page = w.shared(width=390)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    wide = page.evaluate(
        """() => [...document.querySelectorAll('body *')]
            .filter(e => !(e instanceof SVGElement) && e.getBoundingClientRect().right > 391)
            .map(e => e.id || e.tagName)"""
    )
    assert wide == []
    page.evaluate("document.activeElement.blur()")
    reached = set()
    for _ in range(60):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement.id"))
    for control in ("logy", "momentum", "pin", "cursor-range", "scheduler-type", "optimizer-type"):
        assert control in reached, (control, sorted(reached))
    page.focus("#scheduler-type")
    page.keyboard.press("ArrowDown")
    settle(page)
    assert page.evaluate("window.playground.state.spec.scheduler.type") != "CosineAnnealingLR"


def test_assets_come_from_the_service_with_caching_headers(live_server):
    html = httpx.get(f"{live_server}/").text
    assert httpx.get(f"{live_server}/playground").text == html
    assert "http://" not in html.replace(live_server, "") and "https://" not in html
    src = html.split('src="', 1)[1].split('"', 1)[0]
    assert src.startswith("/playground/assets/plotly.min.js?v=")
    response = httpx.get(live_server + src, headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["content-encoding"] == "gzip"
    assert "immutable" in response.headers["cache-control"]
    assert len(response.content) > 1_000_000  # the whole plotly.min.js, decompressed
    again = httpx.get(live_server + src, headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304
    assert httpx.get(f"{live_server}/playground/assets/../main.py").status_code == 404
