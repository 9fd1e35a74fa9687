"""One answer of `llamagate run` on the terminal, as `ollama run` prints it: a spinner until the
first token, the model's thinking between "Thinking..." and "...done thinking.", the text as it
streams, and with --verbose the timings after it."""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import click

from proxy.cli.client import Client, ClientError
from proxy.cli.images import extract
from proxy.cli.wordwrap import WordWrap, stdout_width
from supervisor.durations import format_go_duration, parse_go_duration
from supervisor.errors import LlamagateError

# Ollama's colours for the thinking block (readline's ColorGrey, ColorBold, ColorDefault).
GREY, BOLD, DEFAULT = "\x1b[38;5;245m", "\x1b[1m", "\x1b[0m"
_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


@dataclass
class RunOptions:
    """What a `run` session sends with each request, changed by its flags and `/set` commands."""

    model: str
    format: str | dict[str, Any] | None = None
    think: bool | str | None = None
    hide_thinking: bool = False
    keep_alive: str | None = None
    verbose: bool = False
    word_wrap: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    system: str = ""
    template: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=list)
    # The model's own MESSAGEs (the server puts them before each chat): /save keeps them.
    loaded_messages: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_flags(cls, model: str, format_: str | None, think: str | None, hide_thinking: bool,
                   keep_alive: str | None, verbose: bool, nowordwrap: bool) -> RunOptions:
        """The session `run`'s flags start; a --keepalive or --format that can't be sent is a
        ValueError saying so, before anything is."""
        if keep_alive is not None:
            try:
                parse_go_duration(keep_alive)
            except LlamagateError as e:
                raise ValueError(e.message) from None
        try:
            response_format = format_ if format_ in (None, "json") else json.loads(format_)
        except ValueError:
            raise ValueError(f"--format {format_}: neither json nor a JSON schema") from None
        return cls(model, response_format, {"true": True, "false": False}.get(think or "", think), hide_thinking,
                   keep_alive, verbose, not nowordwrap)

    @property
    def vision(self) -> bool:
        return "vision" in self.capabilities

    def request(self, **body: Any) -> dict[str, Any]:
        """The body of a chat or generate request: the session's settings that are set, and `body`."""
        out: dict[str, Any] = {"model": self.model, **body}
        for key, value in (("format", self.format), ("think", self.think), ("keep_alive", self.keep_alive),
                           ("options", self.options or None)):
            if value is not None:
                out[key] = value
        return out


class Spinner:
    """Ollama's braille spinner on standard error while nothing else is shown (a load, the wait
    for the first token); drawn only on a terminal, and erased when it stops."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Spinner:
        if sys.stderr.isatty():
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        return self

    def _spin(self) -> None:
        frame = 0
        while not self._stop.is_set():
            sys.stderr.write(f"\r{_FRAMES[frame % len(_FRAMES)]} ")
            sys.stderr.flush()
            frame += 1
            self._stop.wait(0.1)

    def stop(self) -> None:
        if self._thread and not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def load(client: Client, opts: RunOptions) -> None:
    """Load the model (an empty generate request, with the session's keep_alive) under a spinner."""
    spinner = Spinner().start()
    try:
        client.request("POST", "/api/generate", json=opts.request(stream=False))
    finally:
        spinner.stop()


def summary(final: dict[str, Any]) -> None:
    """`--verbose`'s timings, line for line as Ollama's `Metrics.Summary` writes them."""
    lines = []
    if final.get("total_duration"):
        lines.append(f"total duration:       {format_go_duration(final['total_duration'])}")
    if final.get("load_duration"):
        lines.append(f"load duration:        {format_go_duration(final['load_duration'])}")
    for kind, label in (("prompt_eval", "prompt eval"), ("eval", "eval")):
        count, duration = final.get(f"{kind}_count", 0), final.get(f"{kind}_duration", 0)
        if count:
            lines.append(f"{label + ' count:':<22}{count} token(s)")
        if duration:
            lines.append(f"{label + ' duration:':<22}{format_go_duration(duration)}")
            lines.append(f"{label + ' rate:':<22}{count / (duration / 1e9):.2f} tokens/s")
    for line in lines:
        click.echo(line, err=True)


def write(text: str, wrap: WordWrap | None) -> None:
    """Text of an answer on standard output, word-wrapped at the terminal's width unless `wrap` is None."""
    sys.stdout.write(wrap.feed(text, stdout_width()) if wrap else text)
    sys.stdout.flush()


class _Printer:
    """Writes the stream's thinking and text to standard output, opening and closing the thinking
    block around the thinking (in grey on a terminal), each word-wrapped on its own."""

    def __init__(self, hide_thinking: bool, word_wrap: bool) -> None:
        self.hide_thinking = hide_thinking
        self.word_wrap = word_wrap
        self.wrap = WordWrap() if word_wrap else None
        self.colour = sys.stdout.isatty()
        self.thinking: list[str] = []
        self.content: list[str] = []
        self.open = False

    def _write(self, text: str) -> None:
        write(text, self.wrap)

    def thought(self, text: str) -> None:
        self.thinking.append(text)
        if self.hide_thinking:
            return
        if not self.open:
            self._write(f"{GREY}{BOLD}Thinking...\n{DEFAULT}{GREY}" if self.colour else "Thinking...\n")
            self.open = True
        self._write(text)

    def said(self, text: str) -> None:
        if self.open:
            tail = "" if "".join(self.thinking).endswith("\n") else "\n"
            closing = "...done thinking.\n\n"
            self._write(tail + (f"{GREY}{BOLD}{closing}{DEFAULT}" if self.colour else closing))
            self.open = False
            self.wrap = WordWrap() if self.word_wrap else None
        self.content.append(text)
        self._write(text)


def stream(client: Client, path: str, body: dict[str, Any], opts: RunOptions) -> tuple[
        dict[str, Any], str, str] | None:
    """Stream one answer of /api/chat or /api/generate; its final chunk, thinking and text, or
    None when Ctrl+C stopped it (the request is closed, which stops the model)."""
    spinner = Spinner().start()
    printer = _Printer(opts.hide_thinking, opts.word_wrap)
    final: dict[str, Any] = {}
    try:
        for chunk in client.stream(path, body):
            message = chunk.get("message") or {}
            thinking = message.get("thinking") or chunk.get("thinking") or ""
            content = message.get("content") or chunk.get("response") or ""
            # With --hidethinking the spinner stays up while the model thinks.
            if content or (thinking and not opts.hide_thinking):
                spinner.stop()
            if thinking:
                printer.thought(thinking)
            if content:
                printer.said(content)
            if chunk.get("done"):
                final = chunk
    except KeyboardInterrupt:
        spinner.stop()
        click.echo()
        return None
    finally:
        spinner.stop()
    return final, "".join(printer.thinking), "".join(printer.content)


def prepare(client: Client, opts: RunOptions, think_given: bool) -> dict[str, Any]:
    """Fill the session from the model's /api/show (capabilities, MESSAGEs) and return it; a model
    that can think thinks unless --think said otherwise, as Ollama's `run` decides, and one that
    can't is refused a --think."""
    info = client.request("POST", "/api/show", json={"model": opts.model}).json()
    opts.capabilities = info.get("capabilities") or []
    opts.loaded_messages = [{"role": m["role"], "content": m["content"]} for m in info.get("messages") or []]
    if not think_given:
        opts.think = True if "thinking" in opts.capabilities else None
    elif opts.think and "thinking" not in opts.capabilities:
        # Before the session starts (the load itself would not refuse it), as Ollama's load does.
        raise ClientError(f'"{opts.model}" does not support thinking')
    return info


def generate_once(client: Client, opts: RunOptions, prompt: str) -> None:
    """`run MODEL PROMPT`: one /api/generate answer (images named in the prompt included)."""
    body = opts.request(prompt=prompt)
    if opts.vision:
        body["prompt"], images = extract(prompt)
        if images:
            body["images"] = images
    answered = stream(client, "/api/generate", body, opts)
    if answered is None:
        return
    if prompt:
        click.echo("\n")
    if opts.verbose:
        summary(answered[0])
