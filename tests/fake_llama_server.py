"""A stand-in for llama-server, for what no small model here can do (thinking, vision, infill,
GPUs) and for an engine's faults: it logs its arguments and every request it gets to
$FAKE_LLAMA_LOG and streams canned answers shaped like llama-server's. Started by llamagate
through `--llama-server`, like the real one.

A generation whose body holds `FAULT:<kind>` fails: `500` answers llama-server's error, `garbage`
answers bytes that are no JSON (an SSE event of them when streamed), `die` kills the process
(SIGKILL) after the first streamed event, `hang` stops it (SIGSTOP: alive, answering nothing).

GPUs: $FAKE_GPUS lists the machine's, `NAME=description:total MiB:free MiB` separated by `;`.
`--list-devices` prints them as llama-server does (after $FAKE_LIST_SECONDS, as a GPU build that
initializes its backend first), and a load logs its offload and buffer lines
as llama-server does at `--log-verbosity 4`, for a model of $FAKE_MODEL_MIB (default: its file) in
$FAKE_LAYERS offloadable layers (default 31) with a KV cache of $FAKE_KV_MIB (default 40): every
layer on the GPUs given by `--device` (else all), split evenly, or `--n-gpu-layers` of them, or
$FAKE_FIT_LAYERS (what --fit would choose)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = os.environ["FAKE_LLAMA_LOG"]
TIMINGS = {"cache_n": 0, "prompt_n": 7, "prompt_ms": 1.5, "predicted_n": 3, "predicted_ms": 2.5}
# Its tokenizer: one token per character. The ids its /completion says it generated are not the
# ones its tokenizer makes of the text, as a real model's need not be.
GENERATED = [[901, 902], [903]]


_FAULT = re.compile(rb"FAULT:(500|garbage|die|hang)")
# Where a request's text first reaches llama-server (/tokenize: an embedding's input).
_GENERATIONS = ("/v1/chat/completions", "/v1/completions", "/completion", "/infill", "/tokenize", "/v1/embeddings")


def _record(entry: dict) -> None:
    with open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")


def _answer(body: dict) -> list[str]:
    """The content pieces: "Hi there", or what follows "ECHO:" in the last message, in two."""
    last = body["messages"][-1].get("content")
    if isinstance(last, str) and last.startswith("ECHO:"):
        text = last[len("ECHO:"):]
        return [text[: len(text) // 2], text[len(text) // 2:]]
    return ["Hi", " there"]


def _pause(body: dict) -> float:
    """Seconds to wait before each streamed event (four times that before a whole answer): the
    number after "SLOW:" that starts the last message, for a generation that takes a while."""
    last = body["messages"][-1].get("content")
    if isinstance(last, str) and last.startswith("SLOW:"):
        return float(last[len("SLOW:"):].split()[0])
    return 0.0


def _chat_answer(body: dict) -> dict:
    """A whole (stream: false) answer: the streamed one's parts joined."""
    reasoning = "Let me think." if (body.get("chat_template_kwargs") or {}).get("enable_thinking", True) else None
    message = {"role": "assistant", "content": "".join(_answer(body)),
               **({"reasoning_content": reasoning} if reasoning else {})}
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}, "timings": TIMINGS}


def _chat_events(body: dict) -> list[dict]:
    """Reasoning first (unless thinking was turned off), then content, then the final event."""
    def chunk(delta: dict, finish: str | None = None, **extra) -> dict:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]}

    events = []
    if (body.get("chat_template_kwargs") or {}).get("enable_thinking", True):
        events += [chunk({"reasoning_content": "Let me "}), chunk({"reasoning_content": "think."})]
    logprobs = None
    if body.get("logprobs"):
        top = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}, {"token": "Yo", "logprob": -2.5, "bytes": [89, 111]}]
        logprobs = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": top[: body.get("top_logprobs", 0)]}]}
    first, second = _answer(body)
    events.append(chunk({"content": first}, **({"logprobs": logprobs} if logprobs else {})))
    events.append(chunk({"content": second}))
    events.append({**chunk({}, "stop"), "timings": TIMINGS})
    return events


def _render(messages: list[dict]) -> str:
    return "".join(f"<{m['role']}>{m.get('content') or ''}" for m in messages)


def _prompt_tokens(prompt: str | list) -> int:
    return sum(1 if isinstance(p, int) else len(p) for p in ([prompt] if isinstance(prompt, str) else prompt))


def _slot_ctx() -> int:
    """Each slot's share of --ctx-size, as llama-server splits it."""
    args = sys.argv[1:]
    return int(args[args.index("--ctx-size") + 1]) // int(args[args.index("--parallel") + 1])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _json(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse_start(self) -> None:
        """An event stream, chunked as llama-server sends one: a process that dies mid-answer
        leaves it visibly unfinished."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _sse(self, events: list[dict], pause: float = 0.0) -> None:
        self._sse_start()
        for e in events:
            time.sleep(pause)
            self._chunk(b"data: " + json.dumps(e).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def do_GET(self) -> None:
        if self.path == "/metrics":  # a family of llama-server's --metrics, in its shape
            data = (b"# HELP llamacpp:requests_processing Number of requests processing.\n"
                    b"# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 0\n")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._json({"status": "ok"})

    def _too_long(self, n_tokens: int) -> bool:
        """llama-server's refusal of a prompt that does not leave a token of the context free."""
        if n_tokens < _slot_ctx():
            return False
        data = json.dumps({"error": {"code": 400, "type": "exceed_context_size_error", "message":
                                     f"request ({n_tokens} tokens) exceeds the available context size "
                                     f"({_slot_ctx()} tokens), try increasing it"}}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return True

    def _fault(self, kind: bytes, body: dict) -> None:
        if kind == b"hang":
            os.kill(os.getpid(), signal.SIGSTOP)
        if kind == b"500":
            data = json.dumps({"error": {"code": 500, "type": "server_error", "message": "fake engine failure"}})
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data.encode())
        elif not body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"\x00{garbage" if kind == b"garbage" else b"")
            if kind == b"die":
                os.kill(os.getpid(), signal.SIGKILL)
        else:
            self._sse_start()
            event = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
                     "content": "Hi", "stop": False}
            self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
            if kind == b"die":
                os.kill(os.getpid(), signal.SIGKILL)
            self._chunk(b"data: {\"choices\": [\xff\xfe not json\n\n")
            self._chunk(b"")

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.loads(raw or b"{}")
        _record({"path": self.path, "body": body})
        if self.path in _GENERATIONS and (fault := _FAULT.search(raw)):
            self._fault(fault.group(1), body)
            return
        if self.path == "/v1/chat/completions":
            if self._too_long(len(_render(body["messages"]))):
                return
            if body.get("stream"):
                self._sse(_chat_events(body), _pause(body))
            else:
                time.sleep(_pause(body) * 4)
                self._json(_chat_answer(body))
        elif self.path == "/v1/completions":
            choice = {"index": 0, "text": "Hi there", "finish_reason": "stop"}
            if body.get("stream"):
                self._sse([{"choices": [{**choice, "text": text, "finish_reason": None}]} for text in ("Hi", " there")]
                          + [{"choices": [{**choice, "text": ""}], "timings": TIMINGS}])
            else:
                self._json({"choices": [choice], "usage": {"prompt_tokens": 7, "completion_tokens": 3,
                                                           "total_tokens": 10}, "timings": TIMINGS})
        elif self.path == "/v1/embeddings":
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            self._json({"data": [{"index": i, "embedding": [0.6, 0.8]} for i in range(len(inputs))],
                        "usage": {"prompt_tokens": 7}})
        elif self.path == "/v1/messages":
            self._json({"type": "message", "role": "assistant", "model": "fake", "content": [
                {"type": "text", "text": "Hi there"}], "stop_reason": "end_turn"})
        elif self.path == "/v1/messages/count_tokens":
            self._json({"input_tokens": 7})
        elif self.path == "/v1/responses":
            self._json({"object": "response", "model": "fake", "status": "completed", "output": []})
        elif self.path == "/completion" and self._too_long(_prompt_tokens(body["prompt"])):
            pass
        elif self.path in ("/infill", "/completion"):
            tokens = body.get("return_tokens")
            self._sse([{"content": "MID", "stop": False, **({"tokens": GENERATED[0]} if tokens else {})},
                       {"content": "DLE", "stop": False, **({"tokens": GENERATED[1]} if tokens else {})},
                       {"content": "", "stop": True, "stop_type": "eos", "timings": TIMINGS}])
        elif self.path == "/apply-template":
            self._json({"prompt": _render(body["messages"])})
        elif self.path == "/tokenize":
            self._json({"tokens": [ord(c) for c in body["content"]]})
        else:
            self.send_error(404)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hung up (llamagate cancelling a generation) is no error: print nothing,
        as llama-server prints nothing, so a traceback in llamagate's log is always llamagate's."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _gpus() -> list[tuple[str, str, int, int]]:
    out = []
    for entry in filter(None, os.environ.get("FAKE_GPUS", "").split(";")):
        name, rest = entry.split("=", 1)
        description, total, free = rest.rsplit(":", 2)
        out.append((name, description, int(total), int(free)))
    return out


def _list_devices() -> None:
    print("Available devices:")
    for name, description, total, free in _gpus():
        print(f"  {name}: {description} ({total} MiB, {free} MiB free)")
    if not _gpus():
        print("  (none)")


def _arg(flag: str) -> str | None:
    args = sys.argv[1:]
    return args[args.index(flag) + 1] if flag in args else None


def _log_load() -> None:
    """The offload and buffer lines of a load, in llama-server's format (timestamps and levels)."""
    file_mib = os.path.getsize(_arg("--model")) / (1 << 20)
    model, layers, kv = (float(os.environ.get(k, d)) for k, d in
                         (("FAKE_MODEL_MIB", file_mib), ("FAKE_LAYERS", 31), ("FAKE_KV_MIB", 40)))
    layers = int(layers)
    chosen = _arg("--device")
    gpus = [g[0] for g in _gpus() if chosen is None or g[0] in chosen.split(",")]
    n = int(_arg("--n-gpu-layers") or os.environ.get("FAKE_FIT_LAYERS") or layers) if gpus else 0
    n = max(min(n, layers), 0)
    lines = []
    if n:
        lines.append(f"load_tensors: offloading {min(n, layers - 1)} repeating layers to GPU")
        lines.append(f"load_tensors: offloaded {n}/{layers} layers to GPU")
    on_gpu = model * n / layers
    for g in gpus if n else []:
        lines.append(f"load_tensors: {g:>12} model buffer size = {on_gpu / len(gpus):8.2f} MiB")
    lines.append(f"load_tensors: {'CPU_Mapped':>12} model buffer size = {model - on_gpu:8.2f} MiB")
    lines.append(f"llama_context: {'CPU':>10}  output buffer size = {0.75:8.2f} MiB")
    kv_gpu = kv * min(n, layers - 1) / (layers - 1)
    for g in gpus if n else []:
        lines.append(f"llama_kv_cache: {g:>10} KV buffer size = {kv_gpu / len(gpus):8.2f} MiB")
    if kv - kv_gpu:
        lines.append(f"llama_kv_cache: {'CPU':>10} KV buffer size = {kv - kv_gpu:8.2f} MiB")
    for g in gpus if n else []:
        lines.append(f"sched_reserve: {g:>10} compute buffer size = {10:8.2f} MiB")
    lines.append(f"sched_reserve: {'CUDA_Host' if n else 'CPU':>10} compute buffer size = {5:8.2f} MiB")
    for i, line in enumerate(lines):
        print(f"0.00.{100 + i:03d}.000 I {line}", flush=True)


def main() -> None:
    if "--list-devices" in sys.argv:  # not a start: not recorded
        time.sleep(float(os.environ.get("FAKE_LIST_SECONDS", "0")))
        _list_devices()
        return
    _record({"argv": sys.argv[1:]})
    _log_load()
    server = _Server(("127.0.0.1", 0), Handler)
    print(f"main: server is listening on http://127.0.0.1:{server.server_address[1]} - starting the main loop",
          flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
