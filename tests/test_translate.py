"""Table tests of the Ollama ↔ llama-server mappings (no I/O)."""

from __future__ import annotations

import msgspec
import pytest

from proxy.llama import wire
from proxy.ollama import schemas, translate
from proxy.semantics import ModelDefaults, Options, sampling
from supervisor.errors import LlamagateError

NO_MODEL = ModelDefaults()


@pytest.mark.parametrize(
    ("params", "options", "num_ctx", "expected"),
    [
        # Ollama's defaults are sent explicitly; num_predict unbounded → 10 × num_ctx.
        ({}, None, 100, {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0,
                         "repeat_penalty": 1.0, "repeat_last_n": 64, "presence_penalty": 0.0,
                         "frequency_penalty": 0.0, "seed": -1, "n_predict": 1000}),
        # The model's PARAMETERs override the defaults, the request overrides both.
        ({"temperature": 0.2, "top_k": 5}, Options(temperature=0.5), 100,
         {"temperature": 0.5, "top_k": 5}),
        ({}, Options(num_predict=7, seed=42, stop=["x"]), 100, {"n_predict": 7, "seed": 42, "stop": ["x"]}),
        ({}, Options(num_predict=-1), 50, {"n_predict": 500}),
        ({}, Options(num_predict=10_000), 50, {"n_predict": 500}),
        ({}, Options(num_keep=4, repeat_last_n=-1), 50, {"n_keep": 4, "repeat_last_n": -1}),
        # Load-time options are not sampling fields.
        ({}, Options(num_ctx=999, num_thread=3), 50, {"n_predict": 500}),
    ],
)
def test_sampling(params, options, num_ctx, expected):
    out = sampling(ModelDefaults(params=params), options, num_ctx)
    assert {k: out[k] for k in expected} == expected
    assert "num_ctx" not in out and "num_thread" not in out


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (None, None),
        ("", None),
        ("json", {"type": "json_object"}),
        ({"type": "object"}, {"type": "json_schema", "json_schema": {"name": "schema", "schema": {"type": "object"}}}),
    ],
)
def test_response_format(fmt, expected):
    assert translate.response_format(fmt) == expected


def test_bad_format_is_400():
    with pytest.raises(LlamagateError) as e:
        translate.response_format("yaml")
    assert e.value.status == 400 and "invalid format" in e.value.message


@pytest.mark.parametrize(
    ("defaults", "messages", "expected"),
    [
        (NO_MODEL, [schemas.Message("user", "hi")], [("user", "hi")]),
        # The model's SYSTEM goes first unless the request brings its own.
        (ModelDefaults(system="S"), [schemas.Message("user", "hi")], [("system", "S"), ("user", "hi")]),
        (ModelDefaults(system="S"), [schemas.Message("system", "mine"), schemas.Message("user", "hi")],
         [("system", "mine"), ("user", "hi")]),
        # MESSAGEs from the Modelfile come before the request's; roles are lower-cased; null content is "".
        (ModelDefaults(messages=(("user", "q"), ("assistant", "a"))), [schemas.Message("USER", None)],
         [("user", "q"), ("assistant", "a"), ("user", "")]),
    ],
)
def test_chat_messages(defaults, messages, expected):
    assert [(m.role, m.content) for m in translate.chat_messages(defaults, messages)] == expected


def test_generate_raw_goes_to_completion():
    req = schemas.GenerateRequest(model="m", prompt="<|im_start|>x", raw=True, format="json")
    body = translate.generate_request(req, ModelDefaults(system="ignored"), 100)
    assert isinstance(body, wire.CompletionRequest)
    assert body.prompt == "<|im_start|>x" and body.json_schema == {"type": "object"}


def test_generate_templated_is_a_one_turn_chat():
    req = schemas.GenerateRequest(model="m", prompt="hello", system="be brief")
    body = translate.generate_request(req, ModelDefaults(system="model system"), 100)
    assert isinstance(body, wire.ChatRequest)
    assert [(m.role, m.content) for m in body.messages] == [("system", "be brief"), ("user", "hello")]


@pytest.mark.parametrize("field", [{"system": "s"}, {"template": "t"}, {"context": [1, 2]}])
def test_raw_refuses_template_system_context(field):
    req = schemas.GenerateRequest(model="m", prompt="p", raw=True, **field)
    with pytest.raises(LlamagateError) as e:
        translate.generate_request(req, NO_MODEL, 100)
    assert e.value.status == 400 and "raw mode" in e.value.message


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("stop", "stop"), ("length", "length"), ("limit", "length"), ("eos", "stop"), ("word", "stop"), (None, "stop")],
)
def test_done_reason(reason, expected):
    assert translate.done_reason(reason) == expected


def test_metrics_count_cached_prompt_tokens():
    t = wire.Timings(cache_n=3, prompt_n=5, prompt_ms=1.5, predicted_n=7, predicted_ms=20.25)
    assert translate.metrics(t, total_ns=99, load_ns=11) == {
        "total_duration": 99, "load_duration": 11, "prompt_eval_count": 8,
        "prompt_eval_duration": 1_500_000, "eval_count": 7, "eval_duration": 20_250_000,
    }


@pytest.mark.parametrize(
    "body",
    [
        translate.chat_request(schemas.ChatRequest(model="m", messages=[schemas.Message("user", "x")]), NO_MODEL, 10),
        translate.generate_request(schemas.GenerateRequest(model="m", prompt="x"), NO_MODEL, 10),
        translate.generate_request(schemas.GenerateRequest(model="m", prompt="x", raw=True), NO_MODEL, 10),
    ],
)
def test_bodies_ask_for_a_stream_and_the_prompt_cache(body):
    # llama-server's defaults for both are false; they must be on the wire, not left to defaults.
    wire = msgspec.json.decode(msgspec.json.encode(body))
    assert wire["stream"] is True and wire["cache_prompt"] is True
    assert wire["top_p"] == 0.9 and wire["min_p"] == 0.0
