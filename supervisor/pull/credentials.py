"""Registry credentials: the bearer token a registry's `WWW-Authenticate` challenge points to,
fetched with a request signed by `~/.ollama/id_ed25519` where the registry is Ollama's own.

A registry answers 401 with `Bearer realm="…",service="…",scope="…"`; the token comes from
`GET <realm>?nonce=…&scope=…&service=…&ts=…` and goes on every later request of the pull or push
as `Authorization: Bearer <token>`. Ollama's registry knows a user by the public half of their
ed25519 key (added at ollama.com/settings/keys), so the token request to it carries
`Authorization: <public key>:<signature>`: the key as `authorized_keys` writes it, without the
type, and an ed25519 signature over `GET,<token URL>,<base64 of the hex SHA-256 of the empty
body>`, as Ollama signs it. Other registries get the token request unsigned: the key is never
shown to a registry that did not ask for it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import msgspec

from supervisor.errors import LlamagateError

# Hosts whose token requests are signed, as `ollama push` names them, and the token hosts each may
# send us to (Ollama's registry issues its tokens from ollama.com).
_SIGNED_SUFFIXES = (".ollama.ai", ".ollama.com")
_TRUSTED_REALMS = {"registry.ollama.ai": {"ollama.com"}}
_EMPTY_BODY = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
DENIED = "unauthorized: access denied"


def key_path() -> Path:
    """Where Ollama keeps its key (read at each use: a key added later counts at once)."""
    return Path.home() / ".ollama" / "id_ed25519"


def signs_for(host: str) -> bool:
    """Whether a model name's registry is Ollama's, which wants signed token requests."""
    host = host.lower().partition(":")[0]
    return any(host.endswith(s) or host == s[1:] for s in _SIGNED_SUFFIXES)


@dataclass(frozen=True)
class Challenge:
    realm: str
    service: str
    scope: str


def parse_challenge(header: str) -> Challenge | None:
    """A `WWW-Authenticate: Bearer …` header's parameters; None for any other scheme."""
    scheme, _, params = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    values = dict(re.findall(r'(\w+)="([^"]*)"', params))
    if not values.get("realm"):
        return None
    return Challenge(values["realm"], values.get("service", ""), values.get("scope", ""))


def token_url(challenge: Challenge, now: float | None = None) -> str:
    """The realm with the challenge's service and scopes, a timestamp and a nonce, its query in
    Go's `url.Values.Encode` order (sorted keys), so that what is signed is what is sent."""
    base, _, query = challenge.realm.partition("?")
    params = [*parse_qsl(query, keep_blank_values=True),
              ("service", challenge.service), *(("scope", s) for s in challenge.scope.split(" ")),
              ("ts", str(int(time.time() if now is None else now))),
              ("nonce", base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("="))]
    params.sort(key=lambda kv: kv[0])  # stable: the values of one key keep their order
    return f"{base}?{urlencode(params)}"


def sign(path: Path, data: bytes) -> str:
    """`<public key>:<signature>` over `data` with the OpenSSH ed25519 key at `path`."""
    # Imported at the first signature: most pulls never need one, and the server starts faster.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise LlamagateError(403, f"the registry wants a request signed with {path}, and there is no such "
                                  f"key: create one with `ssh-keygen -t ed25519 -N '' -f {path}` and add "
                                  f"{path}.pub at https://ollama.com/settings/keys") from None
    except (OSError, ValueError, TypeError) as e:
        raise LlamagateError(403, f"cannot read the key {path} to sign the token request with: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise LlamagateError(403, f"{path} is not an ed25519 key: it cannot sign the token request")
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{public.split()[1].decode()}:{base64.b64encode(key.sign(data)).decode()}"


class Dropped(LlamagateError):
    """A request that got no answer (a dropped connection, a timeout): one worth sending again."""

    def __init__(self, message: str) -> None:
        super().__init__(502, message)


class _Token(msgspec.Struct):
    token: str = ""
    access_token: str = ""  # the OAuth2 name some token servers use instead


class Credentials:
    """The token of one pull or push, obtained when the registry first asks for one."""

    def __init__(self, client: httpx.AsyncClient, host: str, insecure: bool) -> None:
        self.client = client
        self.host = host  # the model name's registry, which decides whether to sign
        self.insecure = insecure
        self.token = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def answer(self, response: httpx.Response) -> None:
        """Get a token for a 401's challenge, for the request to be sent again (a second 401
        after a fresh token means the registry refuses this user: that is `send`'s error)."""
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        if challenge is None:
            raise LlamagateError(403, f"{DENIED} (the registry asks for no token it says how to get)")
        url = token_url(challenge)
        asked, realm = urlsplit(str(response.request.url)), urlsplit(url)
        if realm.netloc != asked.netloc and realm.hostname not in _TRUSTED_REALMS.get(asked.hostname or "", ()):
            raise LlamagateError(502, f"the registry {asked.netloc} sends for a token to another host "
                                      f"({realm.netloc}): refused")
        if realm.scheme != "https" and asked.scheme == "https":
            raise LlamagateError(502, f"the registry {asked.netloc} sends for a token over plain HTTP "
                                      f"({realm.scheme}://{realm.netloc}): refused")
        headers = {}
        if signs_for(self.host):
            headers["Authorization"] = sign(key_path(), f"GET,{url},{_EMPTY_BODY}".encode())
        try:
            r = await self.client.get(url, headers=headers)
        except httpx.TransportError as e:
            raise LlamagateError(502, f"getting a token from {realm.netloc}: {e or type(e).__name__}") from e
        if r.status_code >= 400:
            raise LlamagateError(403, f"{DENIED}: {r.status_code}: {r.text.strip()[:300]}")
        try:
            token = msgspec.json.decode(r.content, type=_Token)
        except msgspec.DecodeError as e:
            raise LlamagateError(502, f"the token server {realm.netloc} answered no token: {e}") from e
        if not (token.token or token.access_token):
            raise LlamagateError(403, DENIED)
        self.token = token.token or token.access_token

    async def send(self, method: str, url: str, headers: dict[str, str] | None = None,
                   content: Callable[[], AsyncIterator[bytes]] | bytes | None = None,
                   follow: bool = False) -> httpx.Response:
        """One request with the token, sent again once with a fresh one if the registry asks;
        `content` is a function making the body when it must be sent twice. The body is read.
        `follow`: follow redirects (httpx drops the token on the way to another host)."""
        async def once() -> httpx.Response:
            body = content() if callable(content) else content
            try:
                return await self.client.request(method, url, headers={**(headers or {}), **self.headers},
                                                  content=body, follow_redirects=follow)
            except httpx.TransportError as e:
                raise Dropped(f"{method} {url}: {e or type(e).__name__}") from e

        r = await once()
        if r.status_code == 401:
            await self.answer(r)
            r = await once()
            if r.status_code == 401:
                raise LlamagateError(403, DENIED)
        return r
