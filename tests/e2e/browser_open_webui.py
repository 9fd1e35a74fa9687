"""Open WebUI against a real `llamagate serve`, driven in a headless Chromium: pick SmolLM2, send
a message, watch a streamed answer arrive. Not in the default run (named outside test_*.py):
`contrib/e2e.sh` installs Chromium and Open WebUI first and runs it."""

from __future__ import annotations

import os
import subprocess
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


# Runs in the page after the message is sent: the answer's text length at every change until
# Open WebUI shows Regenerate (the answer is complete), so the test sees it grow chunk by chunk.
_WATCH_ANSWER = """async () => {
    const lengths = [];
    const deadline = Date.now() + 180000;
    while (Date.now() < deadline) {
        const answer = document.querySelector('.chat-assistant #response-content-container');
        const n = answer ? answer.innerText.trim().length : 0;
        if (n && n !== lengths[lengths.length - 1]) lengths.push(n);
        if (document.querySelector('button[aria-label="Regenerate"]')) return lengths;
        await new Promise(r => setTimeout(r, 15));
    }
    return lengths;
}"""

# The chat as Open WebUI stored it, read with the page's own token: an answer that failed
# carries `error` there, whatever the page shows.
_STORED_CHAT = """async () => {
    const headers = {Authorization: 'Bearer ' + localStorage.token};
    const [chat] = await (await fetch('/api/v1/chats/', {headers})).json();
    return (await (await fetch('/api/v1/chats/' + chat.id, {headers})).json()).chat;
}"""


def test_open_webui_chats_with_smollm2(open_webui: str, page: Page) -> None:
    page.goto(open_webui, wait_until="load")
    # The release notes a new user is shown first.
    page.add_locator_handler(page.get_by_role("button", name="Okay, Let's Go!"), lambda button: button.click())
    page.locator("#model-selector-model-button").click()
    page.get_by_role("option", name=f"Select {MODEL} model").click()
    expect(page.locator("#model-selector-model-button")).to_have_attribute("aria-label", f"Selected model: {MODEL}")
    box = page.locator("#chat-input")
    box.click()
    box.type("Write three sentences about the sea.")
    page.keyboard.press("Enter")
    lengths = page.evaluate(_WATCH_ANSWER)
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "open-webui-chat.png"))
    answer = page.locator(".chat-assistant #response-content-container").last.inner_text().strip()
    messages = list(page.evaluate(_STORED_CHAT)["history"]["messages"].values())
    reply = next(m for m in messages if m["role"] == "assistant")
    assert not reply.get("error"), f"Open WebUI shows an error: {answer!r}"
    assert reply["model"] == MODEL and reply["content"].strip() and reply.get("done", True)
    assert len(lengths) > 2, f"not streamed: the answer appeared as {lengths}"
