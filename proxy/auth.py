"""API keys: which routes need a key and which an admin key, the ASGI layer that checks them, and
the cookie login of the status page at /ui (a browser sends no header when it navigates)."""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Literal
from urllib.parse import parse_qs, quote, unquote

from litestar.types import ASGIApp, Receive, Scope, Send

from proxy.cors import header
from proxy.errors import send_error
from supervisor.config import KeySettings, read_keys_file

log = logging.getLogger("llamagate")

Need = Literal["none", "key", "admin"]
Role = Literal["key", "admin"]

# What clients probe before they know of any key (`ollama` checks the server is up, Open WebUI
# reads the version).
_OPEN = frozenset({("GET", "/"), ("HEAD", "/"), ("GET", "/api/version"), ("HEAD", "/api/version")})
# What changes the store or the runners.
_ADMIN = frozenset({("POST", "/api/create"), ("POST", "/api/copy"), ("DELETE", "/api/delete"),
                    ("POST", "/api/pull"), ("POST", "/api/push")})
LOGIN = "/ui/login"
COOKIE = "llamagate_key"


def route_need(method: str, path: str) -> Need:
    """What a request must present: nothing (the probes), an admin key (routes that change the
    store or the runners: the admin list, blobs, the status page's actions), or any key."""
    if (method, path) in _OPEN:
        return "none"
    if ((method, path) in _ADMIN or (method in ("HEAD", "POST") and path.startswith("/api/blobs/"))
            or (method == "POST" and path.startswith("/ui/") and path != LOGIN)):
        return "admin"
    return "key"


def _digest(key: str) -> bytes:
    # Compared as digests, so every comparison takes as long whatever a key's length.
    return hashlib.sha256(key.encode()).digest()


def _matches(digest: bytes, keys: tuple[bytes, ...]) -> bool:
    # Every key is compared: stopping at the first match would time which one it was.
    return sum(hmac.compare_digest(digest, key) for key in keys) > 0


class KeyRing:
    """The keys in force: the inline ones and those of the files as last read. A file is read at
    start (an unreadable one stops the server) and again on `reload` (SIGHUP)."""

    def __init__(self, settings: KeySettings) -> None:
        self.settings = settings
        self._api, self._admin = self._read()

    def _read(self) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        s = self.settings
        api = [*s.api, *(read_keys_file(s.api_file) if s.api_file else ())]
        admin = [*s.admin, *(read_keys_file(s.admin_file) if s.admin_file else ())]
        return tuple(map(_digest, api)), tuple(map(_digest, admin))

    def reload(self) -> None:
        """Re-read the files; one that can't be read leaves every key as it was."""
        try:
            self._api, self._admin = self._read()
        except (OSError, ValueError) as e:
            log.warning("keys not reloaded, the old ones stay in force: %s", e)
            return
        log.info("keys reloaded: %d API key(s), %d admin key(s)", len(self._api), len(self._admin))

    def role(self, key: str) -> Role | None:
        """What a presented key may do: everything, inference only, or nothing (not a key)."""
        digest = _digest(key)
        admin, api = _matches(digest, self._admin), _matches(digest, self._api)
        if admin or (api and not self.settings.separate_admin):
            return "admin"
        return "key" if api else None


def _on_ui(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


def _cookie(scope: Scope) -> str:
    for part in header(scope, b"cookie").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return unquote(value)
    return ""


def presented_key(scope: Scope) -> str:
    """The key a request carries: `Authorization: Bearer`, or `x-api-key` on Anthropic's routes
    (its clients send that), or the login cookie on /ui; empty when it carries none."""
    scheme, _, token = header(scope, b"authorization").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    path = scope["path"]
    if path.startswith("/v1/messages") and (key := header(scope, b"x-api-key").strip()):
        return key
    return _cookie(scope) if _on_ui(path) else ""


_FORM = """<!doctype html>
<html><head><meta charset="utf-8"><title>llamagate</title></head>
<body><form method="post" action="/ui/login">
<p>{message}</p>
<label>API key <input type="password" name="key" autofocus></label> <button>Sign in</button>
</form></body></html>
"""
_CHALLENGE = (b"www-authenticate", b"Bearer")


async def _send_form(send: Send, message: str) -> None:
    body = _FORM.format(message=message).encode()
    await send({"type": "http.response.start", "status": 401, "headers": [
        (b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()), _CHALLENGE]})
    await send({"type": "http.response.body", "body": body})


# A login form's body: `key=` and a key. More is no login.
_LOGIN_BODY_LIMIT = 4096


async def _form_key(receive: Receive) -> str | None:
    """The `key` field of a posted login form; None when the body is larger than a form's."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > _LOGIN_BODY_LIMIT:
            return None
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    return parse_qs(body.decode("utf-8", "replace")).get("key", [""])[0]


async def _login(keys: KeyRing, receive: Receive, send: Send) -> None:
    """POST /ui/login: a valid key becomes the cookie /ui reads (HttpOnly: no page script can read
    it; SameSite=Strict: no other site's form can post with it), then back to /ui."""
    key = await _form_key(receive)
    if not key or keys.role(key) is None:
        await _send_form(send, "Wrong key." if key else "Enter an API key.")
        return
    cookie = f"{COOKIE}={quote(key, safe='')}; HttpOnly; SameSite=Strict; Path=/ui"
    await send({"type": "http.response.start", "status": 303, "headers": [
        (b"location", b"/ui"), (b"set-cookie", cookie.encode()), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def auth_layer(app: ASGIApp, keys: KeyRing) -> ASGIApp:
    """The ASGI layer: with any key setting given, a request without the key its route needs gets
    401 (with `WWW-Authenticate: Bearer`, in its dialect's shape, or the login form on /ui), one
    with an inference key on an admin route 403. Without key settings everything passes."""
    if not keys.settings.enabled:
        return app

    async def layer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "POST" and path == LOGIN:
            await _login(keys, receive, send)
            return
        # A preflight carries no key (browsers never send one with it) and reaches no route.
        preflight = method == "OPTIONS" and header(scope, b"access-control-request-method")
        need = route_need(method, path)
        if preflight or need == "none":
            await app(scope, receive, send)
            return
        key = presented_key(scope)
        role = keys.role(key) if key else None
        if role is None and _on_ui(path):
            await _send_form(send, "Wrong key." if key else "This page needs an API key.")
        elif role is None:
            where = "x-api-key or Authorization: Bearer" if path.startswith("/v1/messages") else "Authorization: Bearer"
            message = "invalid API key" if key else f"missing API key: send it as {where} <key>"
            await send_error(send, path, 401, message, "invalid_api_key", [_CHALLENGE])
        elif need == "admin" and role != "admin":
            await send_error(send, path, 403, "this key can't change models or the store: use an admin key")
        else:
            await app(scope, receive, send)

    return layer
