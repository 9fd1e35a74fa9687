"""Open WebUI against a real `llamagate serve`, driven in a headless Chromium: pick SmolLM2, send
a message, watch a streamed answer arrive. Not in the default run (named outside test_*.py):
`contrib/e2e.sh` installs Chromium and Open WebUI first and runs it."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server, free_port, wait_until
from playwright.sync_api import Page, expect, sync_playwright

MODEL = "smollm2:135m"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"


def _open_webui_binary() -> str:
    binary = os.environ.get("LLAMAGATE_E2E_OPEN_WEBUI", "")
    assert binary and os.access(binary, os.X_OK), "LLAMAGATE_E2E_OPEN_WEBUI must name open-webui: run contrib/e2e.sh"
    return binary


@pytest.fixture(scope="module")
def open_webui(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Open WebUI started offline, its only backend our server; about 40 s to come up."""
    data = tmp_path_factory.mktemp("open-webui")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "OFFLINE_MODE": "True", "HF_HUB_OFFLINE": "1", "WEBUI_AUTH": "False",
        "OLLAMA_BASE_URL": server.url, "ENABLE_OPENAI_API": "False",
        "DATA_DIR": str(data), "WEBUI_SECRET_KEY": "e2e", "ANONYMIZED_TELEMETRY": "False",
        "DO_NOT_TRACK": "True", "SCARF_NO_ANALYTICS": "True",
    }
    log = open(data / "open-webui.log", "wb")
    proc = subprocess.Popen([_open_webui_binary(), "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=data, stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        assert proc.poll() is None, (data / "open-webui.log").read_text(errors="replace")[-4000:]
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        assert wait_until(up, timeout=240, interval=1), (data / "open-webui.log").read_text(errors="replace")[-4000:]
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield browser.pages[0] if browser.pages else browser.new_page()
        finally:
            browser.close()


def test_open_webui_chats_with_smollm2(open_webui: str, server: Server, page: Page) -> None:
    # Open WebUI lists our models through /api/tags.
    listed = httpx.get(f"{open_webui}/ollama/api/tags", timeout=30).json()
    assert MODEL in [m["name"] for m in listed["models"]]
    started = time.monotonic()
    page.goto(open_webui, wait_until="load")
    page.get_by_role("button", name="Select a model").first.click()
    page.get_by_role("button", name="model-item").filter(has_text=MODEL).first.click()
    box = page.locator("#chat-input")
    box.click()
    box.type("Say hello in one short sentence.")
    page.keyboard.press("Enter")
    answer = page.locator("#response-content-container").last
    expect(answer).not_to_be_empty(timeout=120_000)
    # Streamed: the answer grows, then stops growing once the last chunk is in.
    assert wait_until(lambda: page.locator("button[aria-label='Regenerate']").count() > 0
                      or page.locator(".chat-assistant button:has-text('Regenerate')").count() > 0, timeout=120)
    text = answer.inner_text().strip()
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "open-webui-chat.png"), full_page=True)
    assert text and "error" not in text.lower() and "failed" not in text.lower(), text
    assert "Ollama: " not in page.content()  # Open WebUI's prefix for an upstream error
    assert time.monotonic() - started < 240
