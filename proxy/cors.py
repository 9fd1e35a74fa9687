"""CORS as Ollama answers it (gin-contrib/cors as Ollama's server/routes.go configures it): which
browser origins may call the API, and what a preflight, an actual request and a refusal get."""

from __future__ import annotations

from dataclasses import dataclass

from litestar.types import ASGIApp, Message, Receive, Scope, Send

ALLOW_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
# Ollama's list, spelled as Go's canonical header keys (gin-contrib/cors lowercases then
# canonicalizes them: "OpenAI-Beta" goes out as "Openai-Beta").
ALLOW_HEADERS = ",".join([
    "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With", "Openai-Beta",
    "X-Stainless-Arch", "X-Stainless-Async", "X-Stainless-Custom-Poll-Interval",
    "X-Stainless-Helper-Method", "X-Stainless-Lang", "X-Stainless-Os",
    "X-Stainless-Package-Version", "X-Stainless-Poll-Helper", "X-Stainless-Retry-Count",
    "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Timeout",
])
MAX_AGE = "43200"  # 12 hours, gin-contrib/cors' default


@dataclass(frozen=True)
class Origins:
    """The allowed origins compiled once: exact names, one-`*` patterns, or everything."""

    exact: frozenset[str]
    patterns: tuple[tuple[str, str], ...]  # (before the *, after it)
    everything: bool

    @classmethod
    def compile(cls, origins: list[str]) -> Origins:
        # Exact entries compare trimmed and lowercased; patterns as written, as gin-contrib does.
        return cls(
            exact=frozenset(o.strip().lower() for o in origins),
            patterns=tuple((o.partition("*")[0], o.partition("*")[2]) for o in origins if "*" in o),
            everything="*" in origins,
        )

    def allow(self, origin: str) -> bool:
        """Whether a page at `origin` may call us. A pattern is a prefix and a suffix, so
        `http://localhost:*` also admits `http://localhost:1.example` (Ollama's rule, kept)."""
        if self.everything or origin in self.exact:
            return True
        return any(origin.startswith(before) and origin.endswith(after) for before, after in self.patterns)


def header(scope: Scope, name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), "")


def cors_layer(app: ASGIApp, origins: list[str]) -> ASGIApp:
    """The ASGI layer: a request from an allowed browser origin gets Access-Control-* headers (a
    preflight is answered 204 here, never reaching a route); one from any other origin is a 403
    with no body; a request with no Origin, or from the server's own address, passes untouched."""
    rules = Origins.compile(origins)
    # What every allowed answer carries: the origin named back, or `*` when everything is allowed.
    vary = [] if rules.everything else [(b"vary", b"Origin")]
    preflight_vary = [] if rules.everything else [
        (b"vary", b"Origin"), (b"vary", b"Access-Control-Request-Method"), (b"vary", b"Access-Control-Request-Headers")]
    preflight = [
        (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
        (b"access-control-allow-methods", ALLOW_METHODS.encode()),
        (b"access-control-max-age", MAX_AGE.encode()),
        *preflight_vary,
    ]

    async def layer(scope: Scope, receive: Receive, send: Send) -> None:
        origin = header(scope, b"origin") if scope["type"] == "http" else ""
        host = header(scope, b"host")
        if not origin or origin in (f"http://{host}", f"https://{host}"):
            await app(scope, receive, send)
            return
        if not rules.allow(origin):
            await send({"type": "http.response.start", "status": 403, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        allow_origin = [(b"access-control-allow-origin", b"*" if rules.everything else origin.encode("latin-1"))]
        if scope["method"] == "OPTIONS":
            await send({"type": "http.response.start", "status": 204, "headers": [*preflight, *allow_origin]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *vary, *allow_origin]}
            await send(message)

        await app(scope, receive, send_with_cors)

    return layer
