"""The synthetic upstream: a server that answers /v1/chat/completions with llama-server's SSE,
byte for byte (one HTTP chunk per event, the same fields), as fast as it can, so that what is
measured through it is llamagate's cost per chunk, not a model's. `n_predict` (or `max_tokens`)
content events, then the final one with `timings`, then `[DONE]`. Also /health, /props and
/v1/models, which `--upstream` reads.

Usage: python contrib/bench/synthetic.py PORT
"""

from __future__ import annotations

import asyncio
import sys
import time

import httptools
import msgspec
import uvloop

_ID = "chatcmpl-OvecLlB5BpDZUCe2RPPdAwOfAa7kGSt1"
_TAIL = (
    f',"created":{int(time.time())},"id":"{_ID}","model":"synthetic.gguf",'
    f'"system_fingerprint":"b0-unknown","object":"chat.completion.chunk"'
).encode()
_TIMINGS = (
    b',"timings":{"cache_n":0,"prompt_n":31,"prompt_ms":1.0,"prompt_per_token_ms":0.03,'
    b'"prompt_per_second":31000.0,"predicted_n":%d,"predicted_ms":1.0,"predicted_per_token_ms":0.01,'
    b'"predicted_per_second":100000.0}'
)


def _event(payload: bytes) -> bytes:
    data = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


_ROLE = _event(
    b'{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}]' + _TAIL + b"}"
)
_TOKEN = _event(b'{"choices":[{"finish_reason":null,"index":0,"delta":{"content":" word"}}]' + _TAIL + b"}")
_DONE = _event(b"[DONE]") + b"0\r\n\r\n"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: llama.cpp\r\nAccess-Control-Allow-Origin: \r\nX-Accel-Buffering: no\r\n"
    b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5, max=100\r\n\r\n"
)

_JSON = {
    b"/health": b'{"status":"ok"}',
    b"/props": b'{"model_path":"synthetic.gguf","default_generation_settings":{"n_ctx":4096},"total_slots":1024,'
    b'"build_info":"b0-synthetic","chat_template":"","modalities":{"vision":false}}',
    b"/v1/models": b'{"data":[{"id":"synthetic.gguf","meta":{"n_params":1,"n_ctx_train":4096,"n_embd":8,"size":1}}]}',
}


class _Request(msgspec.Struct):
    n_predict: int | None = None
    max_tokens: int | None = None
    stream: bool = False


def _last(n: int) -> bytes:
    return _event(b'{"choices":[{"finish_reason":"length","index":0,"delta":{}}]' + _TAIL + (_TIMINGS % n) + b"}")


def _json(body: bytes, status: bytes = b"200 OK") -> bytes:
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n"
        b"Keep-Alive: timeout=5, max=100\r\n\r\n%s" % (status, len(body), body)
    )


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.url = b""
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.task: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.can_write.set()
        if self.task is not None:
            self.task.cancel()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        url, body = self.url, b"".join(self.body)
        self.url, self.body = b"", []
        if self.parser.get_method() == b"GET":
            self.transport.write(
                _json(_JSON[url]) if url in _JSON else _json(b'{"error":"not found"}', b"404 Not Found")
            )
            return
        request = msgspec.json.decode(body, type=_Request)
        n = request.n_predict or request.max_tokens or 16
        if not request.stream:
            content = " word" * n
            answer = msgspec.json.encode(
                {
                    "choices": [
                        {"finish_reason": "length", "index": 0, "message": {"role": "assistant", "content": content}}
                    ],
                    "usage": {"completion_tokens": n, "prompt_tokens": 31, "total_tokens": n + 31},
                    "id": _ID,
                    "created": int(time.time()),
                    "model": "synthetic.gguf",
                    "object": "chat.completion",
                }
            )
            self.transport.write(_json(answer))
            return
        self.task = asyncio.get_running_loop().create_task(self._stream(n))

    async def _stream(self, n: int) -> None:
        write = self.transport.write
        write(_SSE_HEAD + _ROLE)
        for _ in range(n):
            if not self.can_write.is_set():
                await self.can_write.wait()
                if self.transport.is_closing():
                    return
            write(_TOKEN)
        write(_last(n) + _DONE)
        self.task = None


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Protocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
