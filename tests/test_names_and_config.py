"""Model names, durations and OLLAMA_HOST as Ollama parses them."""

from __future__ import annotations

import math

import pytest

from supervisor.config import parse_host
from supervisor.durations import parse_go_duration, parse_keep_alive
from supervisor.errors import LlamagateError
from supervisor.names import ModelName


@pytest.mark.parametrize(
    ("text", "parts", "display"),
    [
        ("llama3.2", ("registry.ollama.ai", "library", "llama3.2", "latest"), "llama3.2:latest"),
        ("smollm2:135m", ("registry.ollama.ai", "library", "smollm2", "135m"), "smollm2:135m"),
        ("mattw/pygmalion:latest", ("registry.ollama.ai", "mattw", "pygmalion", "latest"), "mattw/pygmalion:latest"),
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
         ("hf.co", "bartowski", "Llama-3.2-1B-Instruct-GGUF", "Q4_K_M"),
         "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"),
        ("localhost:5000/ns/m:t", ("localhost:5000", "ns", "m", "t"), "localhost:5000/ns/m:t"),
    ],
)
def test_valid_names(text, parts, display):
    name = ModelName.parse(text)
    assert name.parts == parts
    assert name.display == display


@pytest.mark.parametrize(
    "text",
    ["", ":tag", "model:", "a/b/c/d/e", "ns.with.dot/model", "-model", "mod el", "../etc/passwd", "m:../x",
     "x" * 81, "ftp://host/ns/m"],
)
def test_invalid_names_are_400(text):
    with pytest.raises(LlamagateError) as e:
        ModelName.parse(text)
    assert e.value.status == 400 and "invalid model name" in e.value.message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("1h30m", 5400), ("300ms", 0.3), ("-1s", -1), ("0", 0), ("1.5s", 1.5), ("2h", 7200)],
)
def test_go_durations(text, seconds):
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["3600", "1d", "", "5 m", "m5"])
def test_bad_go_durations(text):
    with pytest.raises(LlamagateError):
        parse_go_duration(text)


@pytest.mark.parametrize(("value", "seconds"), [(30, 30), (0, 0), (-1, math.inf), ("-1m", math.inf), ("10m", 600), (1.5, 1.5)])
def test_keep_alive(value, seconds):
    assert parse_keep_alive(value) == seconds


def test_keep_alive_rejects_bool():
    with pytest.raises(LlamagateError):
        parse_keep_alive(True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ("http", "127.0.0.1", 11434)),
        ("0.0.0.0", ("http", "0.0.0.0", 11434)),
        (":8080", ("http", "127.0.0.1", 8080)),
        ("example.com:99", ("http", "example.com", 99)),
        ("[::1]:5000", ("http", "::1", 5000)),
        ("http://example.com", ("http", "example.com", 80)),
        ("https://example.com:8443/path", ("https", "example.com", 8443)),
        ("host:notaport", ("http", "127.0.0.1", 11434)),
        ("host:70000", ("http", "127.0.0.1", 11434)),
    ],
)
def test_ollama_host(text, expected):
    assert parse_host(text) == expected
