"""Table tests of the OpenAI ↔ llama-server mappings (no I/O)."""

from __future__ import annotations

import base64
import struct

import msgspec
import pytest

from proxy import tools
from proxy.llama import wire
from proxy.openai import schemas, translate
from proxy.semantics import ModelDefaults, Options
from supervisor.errors import LlamagateError

ON = translate.Rewrites()
OFF = translate.Rewrites(seed_greedy=False, finish_stop=False)
NO_MODEL = ModelDefaults()


def chat(**fields) -> schemas.ChatCompletionRequest:
    fields.setdefault("messages", [{"role": "user", "content": "hi"}])
    return msgspec.convert({"model": "m", **fields}, schemas.ChatCompletionRequest)


def completion(**fields) -> schemas.CompletionRequest:
    return msgspec.convert({"model": "m", **fields}, schemas.CompletionRequest)


def raises_400(fn, *args, match: str):
    with pytest.raises(LlamagateError) as e:
        fn(*args)
    assert e.value.status == 400 and match in e.value.message, e.value.message


# Rewrites ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "rewrites", "expected"),
    [
        ("length", ON, "stop"),
        # By default tool calls end as "tool_calls", as Ollama sends them; agent loops wait for it.
        ("tool_calls", ON, "tool_calls"),
        ("tool_calls", translate.Rewrites(tool_calls_stop=True), "stop"),
        ("length", translate.Rewrites(tool_calls_stop=True, finish_stop=False), "length"),
        ("stop", ON, "stop"),
        ("length", OFF, "length"),
        ("tool_calls", OFF, "tool_calls"),
        (None, ON, None),
        (None, OFF, None),
    ],
)
def test_finish_reason(reason, rewrites, expected):
    assert translate.finish_reason(reason, rewrites) == expected


@pytest.mark.parametrize(
    ("fields", "max_tokens", "rewrites", "expected"),
    [
        # Omitted fields stay unset: the model's PARAMETERs and Ollama's defaults apply.
        ({}, None, ON, Options()),
        # seed ⇒ temperature 0, even over an explicit temperature; off: the temperature stays.
        ({"seed": 7}, None, ON, Options(seed=7, temperature=0.0)),
        ({"seed": 7, "temperature": 1.5}, None, ON, Options(seed=7, temperature=0.0)),
        ({"seed": 7, "temperature": 1.5}, None, OFF, Options(seed=7, temperature=1.5)),
        ({"seed": 7}, None, OFF, Options(seed=7)),
        ({"stop": "x", "top_p": 0.5}, 12, ON, Options(stop=["x"], top_p=0.5, num_predict=12)),
        ({"stop": ["a", "b"], "frequency_penalty": 0.5, "presence_penalty": -1}, None, ON,
         Options(stop=["a", "b"], frequency_penalty=0.5, presence_penalty=-1)),
        # The `options` extension is the base; OpenAI's own fields win over it.
        ({"options": {"top_k": 3, "temperature": 0.1, "num_ctx": 64}, "temperature": 0.9}, None, ON,
         Options(top_k=3, temperature=0.9, num_ctx=64)),
    ],
)
def test_options(fields, max_tokens, rewrites, expected):
    assert translate.options(chat(**fields), max_tokens, rewrites) == expected


# Chat requests -------------------------------------------------------------------------------


def test_modelfile_parameters_apply_when_the_request_omits_them():
    defaults = ModelDefaults(params={"temperature": 0.3, "top_p": 0.4})
    body = translate.chat_request(chat(), defaults, 100, ON)
    assert (body.temperature, body.top_p) == (0.3, 0.4)
    body = translate.chat_request(chat(temperature=1.0), defaults, 100, ON)
    assert (body.temperature, body.top_p) == (1.0, 0.4)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, 1000),  # unbounded: 10 × num_ctx, as Ollama bounds it
        ({"max_tokens": 5}, 5),
        ({"max_completion_tokens": 6}, 6),
        ({"max_tokens": 5, "max_completion_tokens": 6}, 6),
        ({"options": {"num_predict": 9}}, 9),
        ({"options": {"num_predict": 9}, "max_tokens": 4}, 4),
    ],
)
def test_max_tokens(fields, expected):
    assert translate.chat_request(chat(**fields), NO_MODEL, 100, ON).n_predict == expected


@pytest.mark.parametrize(
    ("defaults", "messages", "expected"),
    [
        (NO_MODEL, [{"role": "developer", "content": "d"}, {"role": "user", "content": "u"}],
         [("system", "d"), ("user", "u")]),
        (ModelDefaults(system="S"), [{"role": "user", "content": "u"}], [("system", "S"), ("user", "u")]),
        (ModelDefaults(system="S"), [{"role": "developer", "content": "d"}, {"role": "user", "content": "u"}],
         [("system", "d"), ("user", "u")]),
        (ModelDefaults(messages=(("user", "q"), ("assistant", "a"))), [{"role": "user", "content": "u"}],
         [("user", "q"), ("assistant", "a"), ("user", "u")]),
    ],
)
def test_chat_messages(defaults, messages, expected):
    out = translate.chat_messages(defaults, chat(messages=messages).messages)
    assert [(m.role, m.content) for m in out] == expected


def test_content_parts_pass_through_with_image_urls_normalised():
    req = chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": "data:image/png;base64,AAAA"},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
    ]}])
    assert translate.has_images(req.messages)
    (m,) = translate.chat_messages(NO_MODEL, req.messages)
    assert msgspec.json.decode(msgspec.json.encode(m.content)) == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
    ]
    assert not translate.has_images(chat().messages)


def test_tool_messages_pass_through():
    req = chat(messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ])
    _, call, result = translate.chat_messages(NO_MODEL, req.messages)
    assert call.content is None
    assert msgspec.json.decode(msgspec.json.encode(call.tool_calls)) == [
        {"function": {"name": "w", "arguments": '{"city":"Oslo"}'}, "id": "c1", "type": "function"}]
    assert (result.role, result.tool_call_id, result.content) == ("tool", "c1", "sunny")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"messages": []}, "messages must not be empty"),
        ({"messages": [{"role": "user"}]}, "content is required"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}]}, "not valid JSON"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "json_schema.schema"),
        ({"tool_choice": "required"}, "needs tools"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}],
          "tool_choice": {"type": "function", "function": {"name": "g"}}}, "not in tools"),
    ],
)
def test_bad_chat_requests_are_400(fields, match):
    raises_400(translate.chat_request, chat(**fields), NO_MODEL, 100, ON, match=match)


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (None, None),
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"type": "json_object"}),
        ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}, "strict": True}},
         {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}}}),
    ],
)
def test_response_format(fmt, expected):
    assert translate.chat_request(chat(response_format=fmt), NO_MODEL, 100, ON).response_format == expected


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, None),
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ({"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_tool_choice(choice, expected):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = translate.chat_request(chat(tools=[tool], tool_choice=choice), NO_MODEL, 100, ON)
    assert body.tool_choice == expected
    # Tools go upstream whole, `type` included (llama-server refuses them without it).
    assert msgspec.json.decode(msgspec.json.encode(body.tools)) == [tool]


def test_stream_asks_upstream_for_usage():
    assert translate.chat_request(chat(stream=True), NO_MODEL, 100, ON).stream_options == wire.StreamOptions(True)
    assert translate.chat_request(chat(), NO_MODEL, 100, ON).stream_options is None


def test_invalid_fields_are_rejected_by_the_schema():
    for fields in ({"n": 0}, {"temperature": 3}, {"messages": [{"role": "robot", "content": "x"}]},
                   {"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, {"tool_choice": "always"}):
        with pytest.raises(msgspec.ValidationError):
            chat(**fields)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [({}, None), ({"num_ctx": 256}, 256), ({"options": {"num_ctx": 128}}, 128),
     ({"num_ctx": 256, "options": {"num_ctx": 128}}, 256)],
)
def test_requested_num_ctx(fields, expected):
    assert translate.requested_num_ctx(chat(**fields)) == expected


# Completions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [({"prompt": "a"}, ["a"]), ({"prompt": ["a", "b"]}, ["a", "b"]), ({"prompt": "a", "echo": False}, ["a"])],
)
def test_prompts(fields, expected):
    assert translate.prompts(completion(**fields)) == expected


@pytest.mark.parametrize(
    ("fields", "match"),
    [({}, "prompt is required"), ({"prompt": []}, "prompt is required"), ({"prompt": "a", "echo": True}, "echo")],
)
def test_bad_prompts_are_400(fields, match):
    raises_400(translate.prompts, completion(**fields), match=match)


def test_completion_request_is_raw_with_logprobs_as_a_count():
    req = completion(prompt=["q", "p"], logprobs=2, max_tokens=3, stop=".")
    body = translate.completion_request(req, "p", ModelDefaults(system="not used"), 100, ON)
    assert isinstance(body, wire.CompletionRequest)
    assert (body.prompt, body.logprobs, body.n_predict, body.stop) == ("p", 2, 3, ["."])


def test_suffix_is_an_infill():
    body = translate.completion_request(completion(prompt="def f(", suffix="return x"), "def f(", NO_MODEL, 100, ON)
    assert isinstance(body, wire.InfillRequest)
    assert (body.input_prefix, body.input_suffix) == ("def f(", "return x")


@pytest.mark.parametrize(
    ("chunk", "text", "reason"),
    [
        (wire.CompletionChunk(content="ab"), "ab", None),
        (wire.CompletionChunk(stop=True, stop_type="limit"), "", "length"),
        (wire.CompletionChunk(stop=True, stop_type="eos"), "", "stop"),
        (wire.CompletionChunk(stop=True, stop_type="word"), "", "stop"),
    ],
)
def test_infill_choice(chunk, text, reason):
    c = translate.infill_choice(chunk)
    assert (c.text, c.finish_reason) == (text, reason)


def test_infill_usage_counts_cached_prompt_tokens():
    chunk = wire.CompletionChunk(stop=True, timings=wire.Timings(cache_n=2, prompt_n=3, predicted_n=4))
    assert translate.infill_usage(chunk) == wire.Usage(5, 4, 9)
    assert translate.infill_usage(wire.CompletionChunk(content="x")) is None


# Answers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "n", "expected"),
    [
        ([], 1, schemas.Usage(0, 0, 0)),
        ([wire.Usage(10, 5, 15)], 1, schemas.Usage(10, 5, 15)),
        # n answers to one prompt: the prompt counts once.
        ([wire.Usage(10, 5, 15), wire.Usage(10, 7, 17)], 2, schemas.Usage(10, 12, 22)),
        # two prompts, one answer each: both prompts count.
        ([wire.Usage(10, 5, 15), wire.Usage(4, 7, 11)], 1, schemas.Usage(14, 12, 26)),
        ([wire.Usage(10, 5, 15, {"cached_tokens": 6}), wire.Usage(10, 1, 11, {"cached_tokens": 9})], 2,
         schemas.Usage(10, 6, 16, {"cached_tokens": 6})),
    ],
)
def test_usage(parts, n, expected):
    assert translate.usage(parts, n) == expected


def test_choices_are_reindexed_and_keep_their_raw_parts():
    upstream = wire.OpenAIChoice(index=0, message=msgspec.Raw(b'{"role":"assistant","content":"x"}'),
                                  finish_reason="length")
    c = translate.chat_choice(3, upstream, OFF)
    assert (c.index, bytes(c.message), c.finish_reason) == (3, b'{"role":"assistant","content":"x"}', "length")
    assert translate.chat_choice(3, upstream, ON).finish_reason == "stop"
    d = translate.chunk_choice(1, wire.OpenAIChoice(delta=msgspec.Raw(b'{"content":"y"}')), ON)
    assert (d.index, bytes(d.delta), d.finish_reason) == (1, b'{"content":"y"}', None)
    t = translate.text_choice(2, wire.OpenAIChoice(text="z", finish_reason="stop"), OFF)
    assert (t.index, t.text, t.finish_reason) == (2, "z", "stop")


@pytest.mark.parametrize(
    ("vector", "dimensions", "fmt", "expected"),
    [
        ([0.6, 0.8], None, "float", [0.6, 0.8]),
        ([0.6, 0.8], 5, "float", [0.6, 0.8]),
        # Shortened vectors are normalised again.
        ([0.6, 0.0, 0.8], 2, "float", [1.0, 0.0]),
        ([3.0, 4.0, 1.0], 2, "float", [0.6, 0.8]),
        ([0.5, -1.0], None, "base64", base64.b64encode(struct.pack("<2f", 0.5, -1.0)).decode()),
    ],
)
def test_embedding(vector, dimensions, fmt, expected):
    out = translate.embedding(vector, dimensions, fmt)
    if fmt == "float":
        assert out == pytest.approx(expected)
    else:
        assert out == expected


@pytest.mark.parametrize("value", ["", "text", ["a", "b"], [1, 2], [[1, 2], [3]]])
def test_embedding_input(value):
    req = msgspec.convert({"model": "m", "input": value}, schemas.EmbeddingRequest)
    assert translate.embedding_input(req) == value


@pytest.mark.parametrize("value", [None, [], ["a", 1], [[1], "a"], [[]]])
def test_bad_embedding_input_is_400(value):
    req = msgspec.convert({"model": "m", "input": value}, schemas.EmbeddingRequest)
    raises_400(translate.embedding_input, req, match="invalid input")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"model":"/blobs/sha256-x","id":"r"}', {"model": "alias", "id": "r"}),
        (b'{"type":"response.created","response":{"model":"/b","status":"in_progress"}}',
         {"type": "response.created", "response": {"model": "alias", "status": "in_progress"}}),
        (b'{"type":"message_start","message":{"model":"/b"}}', {"type": "message_start", "message": {"model": "alias"}}),
        (b'{"input_tokens":3}', {"input_tokens": 3}),
    ],
)
def test_rename_model(data, expected):
    assert msgspec.json.decode(translate.rename_model(data, "alias")) == expected


@pytest.mark.parametrize("data", [b"[DONE]", b"[1,2]", b"not json"])
def test_rename_model_leaves_other_data_alone(data):
    assert translate.rename_model(data, "alias") == data


# Errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected_type", "expected_code"),
    [
        (400, None, "invalid_request_error", None),
        (400, "context_length_exceeded", "invalid_request_error", "context_length_exceeded"),
        (404, "model_not_found", "not_found_error", "model_not_found"),
        (405, None, "invalid_request_error", None),
        (413, None, "invalid_request_error", None),
        (500, None, "api_error", None),
        (501, None, "api_error", None),
        (503, None, "api_error", None),
    ],
)
def test_error(status, code, expected_type, expected_code):
    body = msgspec.json.decode(msgspec.json.encode(translate.error(status, "boom", code)))
    assert body == {"error": {"message": "boom", "type": expected_type, "param": None, "code": expected_code}}


@pytest.mark.parametrize(
    ("status", "expected_type"),
    [(400, "invalid_request_error"), (404, "not_found_error"), (413, "request_too_large"),
     (500, "api_error"), (503, "overloaded_error")],
)
def test_anthropic_error(status, expected_type):
    body = msgspec.json.decode(msgspec.json.encode(translate.anthropic_error(status, "boom")))
    assert body == {"type": "error", "error": {"type": expected_type, "message": "boom"}}


# Forced tool calls for models whose template knows no tools -----------------------------------

WEATHER = {"type": "function", "function": {"name": "w", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "t"}}


@pytest.mark.parametrize(
    ("choice", "native", "expected"),
    [
        ("required", False, ["w", "t"]),
        ({"type": "function", "function": {"name": "t"}}, False, ["t"]),
        ("auto", False, None),
        ("none", False, None),
        (None, False, None),
        # A template with tools: llama-server enforces the choice itself.
        ("required", True, None),
    ],
)
def test_forced_tools(choice, native, expected):
    forced = translate.forced_tools(chat(tools=[WEATHER, TIME], tool_choice=choice), native)
    assert (forced if forced is None else [t.function.name for t in forced]) == expected


def test_tool_call_schema():
    fs = translate.functions(chat(tools=[WEATHER, TIME]).tools)
    one = {"type": "object", "properties": {"name": {"const": "w"}, "arguments": WEATHER["function"]["parameters"]},
           "required": ["name", "arguments"]}
    assert tools.call_schema(fs[:1]) == one
    assert tools.call_schema(fs)["anyOf"][1]["properties"] == {"name": {"const": "t"}, "arguments": {"type": "object"}}


def test_forced_request_asks_for_the_call_by_grammar_and_prompt():
    req = chat(tools=[WEATHER], tool_choice="required", messages=[{"role": "system", "content": "Be brief."},
                                                                  {"role": "user", "content": "Weather in Oslo?"}])
    body = translate.chat_request(req, NO_MODEL, 100, ON, native_tools=False)
    assert body.tools is None and body.tool_choice is None
    assert body.response_format["json_schema"]["schema"] == tools.call_schema(translate.functions(req.tools))
    assert body.messages[0].content.startswith("Be brief.\n\nYou have these functions:\n- w(")
    body = translate.chat_request(chat(tools=[WEATHER], tool_choice="required"), NO_MODEL, 100, ON, native_tools=False)
    assert body.messages[0].role == "system" and "\n- w(" in body.messages[0].content


@pytest.mark.parametrize(
    ("choice", "native", "expected"),
    [
        ("auto", False, ["w", "t"]),
        (None, False, ["w", "t"]),
        ("required", False, ["w", "t"]),
        ({"type": "function", "function": {"name": "t"}}, False, ["t"]),
        ("none", False, None),
        ("auto", True, None),
    ],
)
def test_prompted_tools(choice, native, expected):
    prompted = translate.prompted_tools(chat(tools=[WEATHER, TIME], tool_choice=choice), native)
    assert (prompted if prompted is None else [f.name for f in prompted]) == expected


def test_auto_on_a_template_without_tools_is_a_note_and_no_grammar():
    body = translate.chat_request(chat(tools=[WEATHER]), NO_MODEL, 100, ON, native_tools=False)
    assert body.tools is None and body.tool_choice is None and body.response_format is None
    assert body.messages[0].role == "system" and body.messages[0].content.startswith("You can call these functions:\n")
    # With native tools they go to llama-server and no note is added.
    body = translate.chat_request(chat(tools=[WEATHER]), NO_MODEL, 100, ON)
    assert body.tools == chat(tools=[WEATHER]).tools and [m.role for m in body.messages] == ["user"]


def test_earlier_calls_are_content_where_the_template_knows_no_tools():
    messages = [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"city":"Oslo"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    body = translate.chat_request(chat(tools=[WEATHER], messages=messages), NO_MODEL, 100, ON, native_tools=False)
    call = body.messages[2]
    assert (call.role, call.content, call.tool_calls) == ("assistant", '{"name": "w", "arguments": {"city":"Oslo"}}', None)
    assert tools.calls_in(call.content, translate.functions(chat(tools=[WEATHER]).tools)) == [
        tools.Call("w", {"city": "Oslo"})]


def _decoded(raw):
    return msgspec.json.decode(raw)


def _ids():
    return "call_1"


def test_prompted_call_becomes_a_tool_call():
    fs = translate.functions(chat(tools=[WEATHER, TIME]).tools)
    content = '{"name": "w", "arguments": {"city": "Oslo"}}'
    call = {"function": {"name": "w", "arguments": '{"city":"Oslo"}'}, "id": "call_1", "type": "function"}
    assert _decoded(translate.prompted_call(content, fs, _ids, delta=False)) == {
        "tool_calls": [call], "role": "assistant", "content": None}
    assert _decoded(translate.prompted_call(content, fs, _ids, delta=True)) == {
        "tool_calls": [{**call, "index": 0}], "role": "assistant"}
    for not_a_call in ('{"name": "w", "argu', '{"name": "nope", "arguments": {}}', '{"a": 1}', "Sunny in Oslo."):
        assert translate.prompted_call(not_a_call, fs, _ids, delta=False) is None


def test_prompted_choice():
    fs = translate.functions(chat(tools=[TIME]).tools)
    whole = wire.OpenAIChoice(message=msgspec.Raw(b'{"role":"assistant","content":"{\\"name\\":\\"t\\",\\"arguments\\":{}}"}'),
                               finish_reason="stop")
    c = translate.prompted_choice(whole, fs, _ids)
    assert c.finish_reason == "tool_calls" and _decoded(c.message)["tool_calls"][0]["function"]["name"] == "t"
    cut = wire.OpenAIChoice(message=msgspec.Raw(b'{"role":"assistant","content":"{\\"na"}'), finish_reason="length")
    assert translate.prompted_choice(cut, fs, _ids) is cut


def test_prompted_finish():
    delta = msgspec.Raw(b'{"tool_calls":[]}')
    first, last = translate.prompted_finish(delta)
    assert first.delta is delta and first.finish_reason is None
    assert _decoded(last.delta) == {} and last.finish_reason == "tool_calls"


@pytest.mark.parametrize(("raw", "expected"), [(b'{"content":"x"}', "x"), (b'{"role":"assistant","content":null}', ""),
                                               (b"{}", "")])
def test_content_of(raw, expected):
    assert translate.content_of(msgspec.Raw(raw)) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"null", None),
        (b'{"content":null}', None),
        (b'{"content":[{"token":" Pa","logprob":-0.5,"top_logprobs":[{"token":" Pa","logprob":-0.5},'
         b'{"token":" the","logprob":-2.0}]},{"token":"ris","logprob":-0.1,"top_logprobs":[]}]}',
         schemas.TextLogprobs(tokens=[" Pa", "ris"], token_logprobs=[-0.5, -0.1],
                              top_logprobs=[{" Pa": -0.5, " the": -2.0}, {}], text_offset=[0, 3])),
    ],
)
def test_text_logprobs(raw, expected):
    assert translate.text_logprobs(msgspec.Raw(raw)) == expected
