"""The status page at /ui against a real `llamagate serve` and llama-server: its live feed, its
actions over HTTP, and the page itself in a headless Chromium (Debian's, driven by Playwright),
pulling from the loopback registry of tests/registries.py.

`LLAMAGATE_SCREENSHOT=1` also saves the page with a model loaded to docs/status-page.png."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from conftest import ROOT, Server, wait_until
from registries import MODEL, Cdn, OllamaRegistry

from proxy.ui.snapshot import Snapshot

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "docs" / "status-page.png"
LOADED = "tiny:latest"


@pytest.fixture(scope="module")
def registry() -> Iterator[OllamaRegistry]:
    cdn = Cdn()
    registry = OllamaRegistry(cdn)
    yield registry
    registry.close()
    cdn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, registry, tiny_gguf: Path, llama_server_binary) -> Iterator[Server]:
    mirrors = {"LLAMAGATE_REGISTRY_MIRRORS": f"registry.ollama.ai={registry.url}"}
    srv = Server(tmp_path_factory.mktemp("ui"), env=mirrors)
    try:
        srv.create("tiny", tiny_gguf)
        yield srv
    finally:
        srv.stop()


def load(server: Server, keep_alive: str = "10m") -> None:
    """Load the model without generating anything (an empty prompt, as Ollama's clients do)."""
    r = httpx.post(f"{server.url}/api/generate", json={"model": "tiny", "keep_alive": keep_alive}, timeout=120)
    assert r.status_code == 200, r.text


def ps(server: Server) -> list[str]:
    return [m["name"] for m in httpx.get(f"{server.url}/api/ps").json()["models"]]


def first_snapshot(server: Server) -> Snapshot:
    with httpx.stream("GET", f"{server.url}/ui/events", timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                return msgspec.json.decode(line.removeprefix("data: "), type=Snapshot)
    raise AssertionError("the feed ended before its first snapshot")


# Over HTTP ------------------------------------------------------------------------------------


def test_the_feed_starts_with_a_snapshot_of_what_is_loaded(server):
    load(server)
    try:
        s = first_snapshot(server)
        [runner] = s.runners
        assert (runner.name, runner.kind, runner.state, runner.keep_alive) == (LOADED, "chat", "ready", "")
        assert runner.expires_in is not None and 590 <= runner.expires_in <= 600
        assert runner.rss > 0 and runner.context > 0 and runner.slots >= 1 and runner.busy == 0
        assert any("listening on" in line for line in runner.log), runner.log
        assert s.pending == 0
    finally:
        # Without script the form comes back to the page.
        r = httpx.post(f"{server.url}/ui/unload", data={"model": "tiny"})
        assert (r.status_code, r.headers["location"]) == (303, "/ui")
    assert ps(server) == [] and first_snapshot(server).runners == []


def test_unload_of_an_unknown_model_is_a_404_in_ollamas_shape(server):
    r = httpx.post(f"{server.url}/ui/unload", data={"model": "nosuch"}, headers={"X-Requested-With": "fetch"})
    assert r.status_code == 404 and r.json() == {"error": "model 'nosuch' not found"}


@pytest.mark.parametrize("model", ["", "bad name!", "a/b/c/d:e:f"])
def test_pull_of_a_bad_name_is_a_400(server, model):
    r = httpx.post(f"{server.url}/ui/pull", data={"model": model}, headers={"X-Requested-With": "fetch"})
    assert r.status_code == 400 and r.json()["error"]


def test_a_failed_api_pull_shows_in_the_feed_with_its_error(server):
    r = httpx.post(f"{server.url}/api/pull", json={"model": "test/missing:v1"})
    assert r.status_code == 404
    pulls = [p for p in first_snapshot(server).pulls if p.name == "test/missing:v1"]
    assert pulls and pulls[0].done and "file does not exist" in pulls[0].error


# In a browser ---------------------------------------------------------------------------------


def _seconds(text: str) -> int:
    """A countdown as the page writes it ("9m 58s", "42s") in seconds."""
    m = re.fullmatch(r"(?:(\d+)m )?(\d+)s", text)
    assert m, f"not a countdown: {text!r}"
    return int(m.group(1) or 0) * 60 + int(m.group(2))


@pytest.fixture
def page(tmp_path: Path):
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: run contrib/setup.sh test"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: run contrib/setup.sh test")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.errors = []
            page.on("console", lambda m: m.type == "error" and page.errors.append(f"console: {m.text}"))
            page.on("pageerror", lambda e: page.errors.append(f"pageerror: {e}"))
            yield page
        finally:
            browser.close()


def test_the_page_shows_counts_down_unloads_and_pulls(server, registry, page):
    from playwright.sync_api import expect

    data = os.urandom(6_000_000)
    registry.publish("test/uipull:v1", [(MODEL, data)], throttle=0.03)  # ~3 s: seen in flight
    load(server)
    page.goto(f"{server.url}/ui", wait_until="load")
    expect(page.locator("#live")).to_have_text("live")
    runner = page.locator(".runner")
    expect(runner).to_have_count(1)
    expect(runner.locator("[data-f=name]")).to_have_text(LOADED)
    expect(runner.locator("[data-f=state]")).to_have_text("ready")
    countdown = runner.locator(".countdown")
    first = _seconds(countdown.inner_text())
    assert 590 <= first <= 600
    time.sleep(2.5)
    assert _seconds(countdown.inner_text()) < first, "the countdown did not move: the live feed is not arriving"

    page.locator("form.pull input[name=model]").fill("test/uipull:v1")
    page.locator("form.pull button").click()
    pull = page.locator(".pull", has_text="test/uipull:v1")
    expect(pull).to_have_count(1)
    if os.environ.get("LLAMAGATE_SCREENSHOT") == "1":
        expect(pull.locator("[data-f=bytes]")).to_have_text(re.compile(r"^[1-9].* MB / "))
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
    expect(pull.locator("[data-f=status]")).to_have_text("success", timeout=30_000)
    assert (server.models / "manifests/registry.ollama.ai/test/uipull/v1").exists()

    runner.get_by_role("button", name="Unload").click()
    expect(page.locator(".runner")).to_have_count(0)
    expect(page.locator("#runners + .empty")).to_be_visible()
    assert wait_until(lambda: ps(server) == [])
    # The load above is a finished inference request.
    loaded = page.locator("#recent tr", has_text="/api/generate")
    expect(loaded.first).to_contain_text("200")
    expect(loaded.first).to_contain_text("tiny")
    assert page.errors == []


def test_names_are_escaped(server, page):
    """A name with markup in it is text on the page, both in the first paint and from the feed."""
    from playwright.sync_api import expect


    name = 'test/x:<img src=x onerror="alert(1)">'
    r = httpx.post(f"{server.url}/api/pull", json={"model": name})
    assert r.status_code == 400
    page.goto(f"{server.url}/ui", wait_until="load")
    expect(page.locator("#live")).to_have_text("live")
    assert page.locator(".pull [data-f=name]", has_text=name).count() >= 1
    assert page.locator(".pull img").count() == 0
    assert page.errors == []


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, tiny_gguf: Path, llama_server_binary) -> Iterator[Server]:
    """The page behind keys: "user" may look, only "admin" may unload."""
    srv = Server(tmp_path_factory.mktemp("ui-keys"),
                 env={"LLAMAGATE_API_KEYS": "user", "LLAMAGATE_ADMIN_KEYS": "admin", "LLAMAGATE_API_KEY": "admin"})
    try:
        srv.create("tiny", tiny_gguf)
        yield srv
    finally:
        srv.stop()


def _sign_in(page, server: Server, key: str) -> None:
    from playwright.sync_api import expect

    page.context.clear_cookies()
    page.goto(f"{server.url}/ui", wait_until="load")
    page.locator("input[name=key]").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#live")).to_have_text("live")
    page.errors.clear()  # the browser reports the 401 that brought the form


def test_behind_keys_the_page_signs_in_and_only_an_admin_key_unloads(keyed, page):
    from playwright.sync_api import expect

    admin = {"Authorization": "Bearer admin"}
    assert httpx.get(f"{keyed.url}/ui/events").status_code == 401
    r = httpx.post(f"{keyed.url}/api/generate", json={"model": "tiny", "keep_alive": "10m"}, headers=admin, timeout=120)
    assert r.status_code == 200, r.text

    _sign_in(page, keyed, "user")
    runner = page.locator(".runner")
    expect(runner.locator("[data-f=name]")).to_have_text(LOADED)
    runner.get_by_role("button", name="Unload").click()
    expect(page.locator("#message")).to_contain_text("use an admin key")
    assert [m["name"] for m in httpx.get(f"{keyed.url}/api/ps", headers=admin).json()["models"]] == [LOADED]
    assert any("403" in e for e in page.errors), page.errors  # the browser reports the refusal

    _sign_in(page, keyed, "admin")
    page.locator(".runner").get_by_role("button", name="Unload").click()
    expect(page.locator(".runner")).to_have_count(0)
    assert httpx.get(f"{keyed.url}/api/ps", headers=admin).json()["models"] == []
    assert page.errors == []
