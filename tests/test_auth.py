"""API keys on a real `llamagate serve` (in front of tests/fake_llama_server.py): open probes, 401
in each dialect's shape, Bearer and x-api-key, admin routes, the keys file and SIGHUP, the /ui
cookie login, the warning of an open server on the network, and the real client libraries."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from conftest import Server, fake_upstream_server, wait_until

from proxy.auth import route_need
from supervisor.config import Config, read_keys_file

USER, ADMIN = "user-k3y-7f3a", "adm1n-k3y-c2d9"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, tiny_gguf: Path):
    tmp = tmp_path_factory.mktemp("keyed")
    srv = fake_upstream_server(tmp, env={"LLAMAGATE_API_KEYS": USER, "LLAMAGATE_ADMIN_KEYS": ADMIN,
                                         "LLAMAGATE_API_KEY": ADMIN})  # the CLI's, for `create`
    try:
        srv.create("tiny", tiny_gguf)
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize(("method", "path", "need"), [
    ("GET", "/", "none"), ("HEAD", "/", "none"), ("GET", "/api/version", "none"), ("HEAD", "/api/version", "none"),
    ("POST", "/", "key"), ("GET", "/api/tags", "key"), ("POST", "/api/chat", "key"), ("POST", "/api/show", "key"),
    ("GET", "/api/ps", "key"), ("POST", "/v1/chat/completions", "key"), ("GET", "/nowhere", "key"),
    ("POST", "/api/create", "admin"), ("POST", "/api/copy", "admin"), ("DELETE", "/api/delete", "admin"),
    ("POST", "/api/pull", "admin"), ("POST", "/api/push", "admin"), ("HEAD", "/api/blobs/sha256:ab", "admin"),
    ("POST", "/api/blobs/sha256:ab", "admin"), ("POST", "/ui/unload", "admin"), ("POST", "/ui/pull", "admin"),
    ("GET", "/ui", "key"), ("GET", "/ui/anything", "key"), ("POST", "/ui/login", "key"),
])
def test_route_classes(method: str, path: str, need: str) -> None:
    assert route_need(method, path) == need


def test_probes_need_no_key(keyed) -> None:
    assert httpx.get(keyed.url).text == "Ollama is running"
    assert httpx.head(keyed.url).status_code == 200
    assert httpx.get(f"{keyed.url}/api/version").json()["version"]
    assert httpx.head(f"{keyed.url}/api/version").status_code == 200


def test_401_in_each_dialect(keyed) -> None:
    r = httpx.get(f"{keyed.url}/api/tags")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json() == {"error": "missing API key: send it as Authorization: Bearer <key>"}
    r = httpx.post(f"{keyed.url}/v1/chat/completions", json={}, headers=bearer("wrong"))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"] == {"message": "invalid API key", "type": "authentication_error", "param": None,
                                 "code": "invalid_api_key"}
    r = httpx.post(f"{keyed.url}/v1/messages", json={}, headers={"x-api-key": "wrong"})
    assert r.status_code == 401
    assert r.json() == {"type": "error", "error": {"type": "authentication_error", "message": "invalid API key"}}
    # An unknown path needs a key too: without one, nothing tells which routes exist.
    assert httpx.get(f"{keyed.url}/nowhere").status_code == 401


def test_bearer_and_x_api_key(keyed) -> None:
    assert httpx.get(f"{keyed.url}/api/tags", headers=bearer(USER)).json()["models"]
    assert httpx.get(f"{keyed.url}/api/tags", headers={"authorization": f"bearer {USER}"}).status_code == 200
    assert httpx.get(f"{keyed.url}/v1/models", headers=bearer(USER)).status_code == 200
    # x-api-key is Anthropic's header: it counts on /v1/messages only.
    assert httpx.get(f"{keyed.url}/api/tags", headers={"x-api-key": USER}).status_code == 401
    body = {"model": "tiny", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    for headers in ({"x-api-key": USER}, bearer(USER)):
        r = httpx.post(f"{keyed.url}/v1/messages/count_tokens", json=body, headers=headers)
        assert r.status_code not in (401, 403), r.text


def test_inference_key_on_admin_routes_is_403(keyed) -> None:
    for method, path in (("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/copy"), ("DELETE", "/api/delete"),
                         ("POST", "/api/create"), ("HEAD", "/api/blobs/sha256:" + "0" * 64), ("POST", "/ui/unload")):
        r = httpx.request(method, f"{keyed.url}{path}", json={"model": "tiny"}, headers=bearer(USER))
        assert r.status_code == 403, (method, path)
        if method != "HEAD":
            assert "admin key" in r.json()["error"]


def test_admin_key_does_everything(keyed) -> None:
    url = keyed.url
    assert httpx.post(f"{url}/api/copy", json={"source": "tiny", "destination": "tiny2"},
                      headers=bearer(ADMIN)).status_code == 200
    r = httpx.request("DELETE", f"{url}/api/delete", json={"model": "tiny2"}, headers=bearer(ADMIN))
    assert r.status_code == 200
    assert httpx.head(f"{url}/api/blobs/sha256:{'0' * 64}", headers=bearer(ADMIN)).status_code == 404
    chat = {"model": "tiny", "stream": False, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{url}/api/chat", json=chat, headers=bearer(ADMIN), timeout=60)
    assert r.json()["message"]["content"] == "Hi there"


def test_client_libraries_with_keys(keyed) -> None:
    messages = [{"role": "user", "content": "hi"}]
    client = ollama.Client(host=keyed.url, headers=bearer(USER))
    assert client.chat(model="tiny", messages=messages).message.content == "Hi there"
    assert [m.model for m in client.list().models] == ["tiny:latest"]
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=keyed.url).list()
    assert e.value.status_code == 401
    oa = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=USER)
    assert oa.chat.completions.create(model="tiny", messages=messages).choices[0].message.content == "Hi there"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_cors_preflight_needs_no_key(keyed) -> None:
    origin = "http://localhost:3000"
    r = httpx.options(f"{keyed.url}/api/chat", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                        "Access-Control-Request-Headers": "authorization"})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == origin
    r = httpx.get(f"{keyed.url}/api/tags", headers={"Origin": origin})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == origin
    assert httpx.get(f"{keyed.url}/api/tags", headers={"Origin": origin, **bearer(USER)}).status_code == 200


def test_ui_cookie_login(keyed) -> None:
    url = keyed.url
    r = httpx.get(f"{url}/ui")
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/ui/login">' in r.text and 'name="key"' in r.text
    assert "<script" not in r.text
    r = httpx.post(f"{url}/ui/login", data={"key": "wrong"})
    assert r.status_code == 401 and "Wrong key." in r.text
    r = httpx.post(f"{url}/ui/login", data={"key": USER})
    assert r.status_code == 303 and r.headers["location"] == "/ui"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"llamagate_key={USER};")
    assert all(part in cookie for part in ("HttpOnly", "SameSite=Strict", "Path=/ui"))
    jar = {"llamagate_key": USER}
    # Past the login: the page.
    r = httpx.get(f"{url}/ui", cookies=jar)
    assert r.status_code == 200 and 'id="runners"' in r.text
    assert httpx.post(f"{url}/ui/unload", cookies=jar).status_code == 403  # an inference key
    r = httpx.post(f"{url}/ui/unload", cookies={"llamagate_key": ADMIN}, data={"model": "nosuch"})
    assert r.status_code == 404 and r.json() == {"error": "model 'nosuch' not found"}
    assert httpx.get(f"{url}/api/tags", cookies=jar).status_code == 401
    assert httpx.get(f"{url}/ui", cookies={"llamagate_key": "wrong"}).status_code == 401


def test_no_key_in_the_log(keyed) -> None:
    """Last in this module: after every request above, wrong keys and a login included."""
    log = keyed.log()
    assert "tiny" in log
    assert USER not in log and ADMIN not in log


def test_keys_file_reloads_on_sighup(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# the team's keys\n\nold-key\n  spaced-key  \n")
    srv = Server(tmp_path, env={"LLAMAGATE_API_KEYS_FILE": str(keys)})
    tags = f"{srv.url}/api/tags"
    try:
        assert httpx.get(tags, headers=bearer("old-key")).status_code == 200
        assert httpx.get(tags, headers=bearer("spaced-key")).status_code == 200
        assert httpx.get(tags, headers=bearer("# the team's keys")).status_code == 401
        # Only API keys: one may change the store too.
        assert httpx.head(f"{srv.url}/api/blobs/sha256:{'0' * 64}", headers=bearer("old-key")).status_code == 404
        keys.write_text("new-key\n")
        srv.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: httpx.get(tags, headers=bearer("new-key")).status_code == 200)
        assert httpx.get(tags, headers=bearer("old-key")).status_code == 401
        # A file that can't be read keeps the keys in force, and says so once.
        keys.unlink()
        keys.mkdir()
        srv.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "keys not reloaded" in srv.log())
        assert httpx.get(tags, headers=bearer("new-key")).status_code == 200
        assert srv.log().count("keys not reloaded") == 1
        assert srv.proc.poll() is None
    finally:
        srv.stop()
    assert "new-key" not in srv.log() and "old-key" not in srv.log()


def test_unreadable_keys_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited") as e:
        Server(tmp_path, env={"LLAMAGATE_API_KEYS_FILE": str(tmp_path / "missing")})
    assert "missing" in str(e.value)


OPEN_WARNING = "can use and change every model; set LLAMAGATE_API_KEYS"


def test_open_on_the_network_warns_once(tmp_path: Path) -> None:
    for sub in ("open", "loopback", "keyed"):
        (tmp_path / sub).mkdir()
    srv = Server(tmp_path / "open", bind="0.0.0.0")
    srv.stop()
    assert srv.log().count(OPEN_WARNING) == 1
    assert f"anyone who can reach 0.0.0.0:{srv.port}" in srv.log()
    for sub, kwargs in (("loopback", {}), ("keyed", {"bind": "0.0.0.0", "env": {"LLAMAGATE_API_KEYS": USER}})):
        srv = Server(tmp_path / sub, **kwargs)
        srv.stop()
        assert OPEN_WARNING not in srv.log(), sub


def test_key_settings_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# comment\n\n  a-key  \n#not-a-key\nb#key\n")
    assert read_keys_file(keys) == ("a-key", "b#key")
    monkeypatch.setenv("LLAMAGATE_API_KEYS", " one, ,two ")
    monkeypatch.setenv("LLAMAGATE_ADMIN_KEYS_FILE", str(keys))
    monkeypatch.setenv("LLAMAGATE_MAX_CONNECTIONS", "7")
    monkeypatch.setenv("LLAMAGATE_KEEPALIVE_TIMEOUT", "1m")
    cfg = Config.load()
    assert cfg.keys.api == ("one", "two") and cfg.keys.admin_file == keys
    assert cfg.keys.enabled and cfg.keys.separate_admin
    assert (cfg.max_connections, cfg.keepalive_timeout) == (7, 60.0)
