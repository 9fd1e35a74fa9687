"""/v1 reasoning as Ollama maps it: `reasoning_effort` and Responses' `reasoning.effort` become
`think` (the template's enable_thinking and reasoning_effort), and reasoning comes back as
`reasoning`. Against the fake llama-server, which thinks unless told not to."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from conftest import fake_upstream_server
from proxy.openai import translate
from supervisor.errors import LlamagateError
from test_ollama_fake_upstream import THINKING_TEMPLATE, _metadata_gguf

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fake-reasoning")
    srv = fake_upstream_server(tmp)
    try:
        srv.create("thinker", _metadata_gguf(tmp / "thinker.gguf", "qwen3", **{"tokenizer.chat_template": THINKING_TEMPLATE}))
        srv.create("plain", _metadata_gguf(tmp / "plain.gguf", "llama"))
        srv.oai = OpenAI(base_url=f"{srv.url}/v1/", api_key="x", max_retries=0)
        yield srv
    finally:
        srv.stop()


def _last(fake, path: str) -> dict:
    return [r for r in fake.requests() if r.get("path") == path][-1]["body"]


@pytest.mark.parametrize(
    ("effort", "expected"),
    [
        ("none", False), ("minimal", "low"), ("low", "low"), ("medium", "medium"), ("high", "high"),
        ("max", "max"), ("xhigh", "max"), ("ultra", "max"), ("", None), (None, None),
    ],
)
def test_efforts_map_to_think_as_ollama_maps_them(effort, expected):
    assert translate.responses_think(effort) == expected


def test_an_unknown_effort_is_a_400():
    with pytest.raises(LlamagateError) as e:
        translate.responses_think("extreme")
    assert e.value.status == 400 and e.value.message.startswith('invalid reasoning value: "extreme"')


@pytest.mark.parametrize(
    ("extra", "kwargs"),
    [
        ({"reasoning_effort": "none"}, {"enable_thinking": False}),
        ({"reasoning_effort": "minimal"}, {"enable_thinking": True, "reasoning_effort": "low"}),
        ({"reasoning_effort": "xhigh"}, {"enable_thinking": True, "reasoning_effort": "max"}),
        # Responses' shape wins over Chat Completions', as in Ollama.
        ({"reasoning": {"effort": "none"}, "reasoning_effort": "high"}, {"enable_thinking": False}),
        ({}, None),
    ],
)
def test_reasoning_effort_reaches_the_template(fake, extra, kwargs):
    list(fake.oai.chat.completions.create(model="thinker", messages=HI, stream=True, extra_body=extra))
    assert _last(fake, "/v1/chat/completions").get("chat_template_kwargs") == kwargs


def test_reasoning_none_turns_thinking_off(fake):
    chunks = list(fake.oai.chat.completions.create(model="thinker", messages=HI, stream=True, reasoning_effort="none"))
    assert not any((c.choices[0].delta.model_extra or {}).get("reasoning") for c in chunks if c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi there"


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_comes_back_as_reasoning(fake, stream):
    """Ollama's field is `reasoning`; it sends no `reasoning_content`."""
    r = httpx.post(f"{fake.url}/v1/chat/completions", json={"model": "thinker", "messages": HI, "stream": stream},
                   timeout=30)
    assert r.status_code == 200 and "reasoning_content" not in r.text
    if stream:
        events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: {")]
        reasoning = "".join(httpx.Response(200, content=e).json()["choices"][0]["delta"].get("reasoning", "")
                            for e in events if '"choices":[{' in e)
    else:
        reasoning = r.json()["choices"][0]["message"]["reasoning"]
    assert reasoning == "Let me think."


def test_earlier_reasoning_goes_back_to_the_template(fake):
    fake.oai.chat.completions.create(model="thinker", stream=True, messages=[
        *HI, {"role": "assistant", "content": "Hello", "reasoning": "They greet."}, *HI])
    assert _last(fake, "/v1/chat/completions")["messages"][1]["reasoning_content"] == "They greet."


def test_a_model_that_cannot_think(fake):
    with pytest.raises(openai.BadRequestError) as e:
        fake.oai.chat.completions.create(model="plain", messages=HI, reasoning_effort="high")
    assert e.value.body["message"] == '"plain" does not support thinking'
    # Turning thinking off is always accepted.
    fake.oai.chat.completions.create(model="plain", messages=HI, stream=True, reasoning_effort="none")
    with pytest.raises(openai.BadRequestError) as e:
        fake.oai.chat.completions.create(model="thinker", messages=HI, reasoning_effort="extreme")
    assert e.value.body["message"].startswith('invalid reasoning value: "extreme"')


@pytest.mark.parametrize(
    ("reasoning", "kwargs"),
    [
        ({"effort": "none"}, {"enable_thinking": False}),
        ({"effort": "minimal"}, {"enable_thinking": True, "reasoning_effort": "low"}),
        ({"summary": "auto"}, None),
    ],
)
def test_responses_reasoning_effort_reaches_the_template(fake, reasoning, kwargs):
    r = httpx.post(f"{fake.url}/v1/responses", json={"model": "thinker", "input": "hi", "reasoning": reasoning})
    assert r.status_code == 200 and r.json()["model"] == "thinker"
    body = _last(fake, "/v1/responses")
    assert body.get("chat_template_kwargs") == kwargs and body["reasoning"] == reasoning


def test_responses_bad_effort_is_a_400(fake):
    r = httpx.post(f"{fake.url}/v1/responses", json={"model": "thinker", "input": "hi", "reasoning": {"effort": "x"}})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith('invalid reasoning value: "x"')
