"""Table tests of the mappings added for tools, thinking, images, templates, embeddings and
/api/show (no I/O)."""

from __future__ import annotations

import base64
import math

import pytest

from proxy.llama import wire
from proxy.ollama import schemas, translate
from proxy.semantics import ModelDefaults, think_kwargs
from supervisor.models.capabilities import capabilities
from supervisor.errors import LlamagateError
from supervisor.models.gguf import GGUFInfo, SkippedArray

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n1234").decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0abcd").decode()
WEBP = base64.b64encode(b"RIFF\0\0\0\0WEBPVP8 ").decode()


@pytest.mark.parametrize(
    ("template", "system", "prompt", "expected"),
    [
        ("{{ .Prompt }}", "", "hi", "hi"),
        ("{{ .System }} {{ .Prompt }}", "S", "P", "S P"),
        ("{{ if .System }}<s>{{ .System }}</s>{{ end }}<u>{{ .Prompt }}</u>", "", "P", "<u>P</u>"),
        ("{{ if .System }}<s>{{ .System }}</s>{{ end }}<u>{{ .Prompt }}</u>", "S", "P", "<s>S</s><u>P</u>"),
        ("{{ if .System }}A{{ else }}B{{ end }}", "", "", "B"),
        ("USER: {{ .Prompt }}\n  {{- .Response }}  \nASSISTANT:", "", "P", "USER: P  \nASSISTANT:"),
        ("[INST] {{ .Prompt }} [/INST]\n{{- /* no */ -}}", "", "P", None),
        ("{{ range .Messages }}{{ .Content }}{{ end }}", "", "P", None),
        ("{{ if .System }}unterminated", "S", "P", None),
    ],
)
def test_render_template(template, system, prompt, expected):
    if expected is None:
        with pytest.raises(LlamagateError) as e:
            translate.render_template(template, system, prompt)
        assert e.value.status == 400 and "unsupported template" in e.value.message
    else:
        assert translate.render_template(template, system, prompt) == expected


@pytest.mark.parametrize(
    ("think", "caps", "expected"),
    [
        (None, [], None),
        (None, ["thinking"], None),
        (False, [], None),
        (False, ["thinking"], {"enable_thinking": False}),
        (True, ["thinking"], {"enable_thinking": True}),
        ("low", ["thinking"], {"enable_thinking": True, "reasoning_effort": "low"}),
        (True, [], '"m" does not support thinking'),
        ("medium", [], '"m" does not support thinking'),
        ("extreme", ["thinking"], 'invalid think value: "extreme"'),
    ],
)
def test_think(think, caps, expected):
    if isinstance(expected, str):
        with pytest.raises(LlamagateError) as e:
            think_kwargs(think, "m", caps)
        assert e.value.status == 400 and expected in e.value.message
    else:
        assert think_kwargs(think, "m", caps) == expected


@pytest.mark.parametrize(("data", "mime"), [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp")])
def test_image_part_sniffs_the_type(data, mime):
    assert translate.image_part(data) == {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


@pytest.mark.parametrize("bad", ["data:image/png;base64," + PNG, "%%%not base64", "abc"])
def test_image_part_refuses_bad_input(bad):
    with pytest.raises(LlamagateError) as e:
        translate.image_part(bad)
    assert e.value.status == 400


def test_chat_message_with_tool_calls_and_tool_results():
    call = schemas.ToolCall(schemas.ToolCallFunction("f", {"a": 1}), id="c1")
    assistant = translate.chat_message(schemas.Message("assistant", None, tool_calls=[call]))
    assert assistant.content == "" and assistant.tool_calls == [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]
    # A string of arguments (a lenient client) is passed on as it is.
    lenient = schemas.ToolCall(schemas.ToolCallFunction("f", '{"a": 1}'))
    assert translate.chat_message(schemas.Message("assistant", tool_calls=[lenient])).tool_calls[0] == {
        "id": "call_0", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    tool = translate.chat_message(schemas.Message("Tool", "42", tool_name="f", tool_call_id="c1"))
    assert (tool.role, tool.content, tool.name, tool.tool_call_id) == ("tool", "42", "f", "c1")


def test_tool_calls_are_assembled_with_object_arguments():
    pieces = {1: ("id1", "g", ['{"x": ', '"y"}']), 0: ("id0", "f", [])}
    out = translate.tool_calls(pieces)
    assert [(c.id, c.function.index, c.function.name, c.function.arguments) for c in out] == [
        ("id0", 0, "f", {}), ("id1", 1, "g", {"x": "y"})]
    with pytest.raises(LlamagateError):
        translate.tool_calls({0: ("i", "f", ["{not json"])})
    # A call cut off by num_predict is dropped, the complete ones kept.
    cut = translate.tool_calls({0: ("a", "f", ['{"x": 1}']), 1: ("b", "f", ['{"x": '])}, truncated=True)
    assert [c.id for c in cut] == ["a"]


def test_chat_request_sends_tools_where_the_template_knows_them():
    tools = [{"type": "function", "function": {"name": "f"}}]
    req = schemas.ChatRequest(model="m", messages=[schemas.Message("user", "x")], tools=tools)
    assert translate.chat_request(req, ModelDefaults(), 100, "m", ["completion", "tools"]).tools == tools
    # Elsewhere they are a system note (see test_tools.py).
    body = translate.chat_request(req, ModelDefaults(), 100, "m", ["completion"])
    assert body.tools is None and body.messages[0].role == "system"
    # An empty tool list (ollama-python always sends one) needs no capability.
    req.tools = []
    assert translate.chat_request(req, ModelDefaults(), 100, "m", ["completion"]).tools is None


@pytest.mark.parametrize(("logprobs", "top", "expected"), [(False, 0, None), (True, 0, 0), (True, 5, 5), (False, 3, 3)])
def test_top_logprobs(logprobs, top, expected):
    assert translate.top_logprobs(logprobs, top) == expected


def test_generate_paths():
    caps = ["completion", "insert"]
    infill = translate.generate_request(schemas.GenerateRequest(model="m", prompt="a", suffix="b"),
                                        ModelDefaults(), 100, "m", caps)
    assert isinstance(infill, wire.InfillRequest) and (infill.input_prefix, infill.input_suffix) == ("a", "b")
    tpl = translate.generate_request(schemas.GenerateRequest(model="m", prompt="P", template="<{{ .System }}|{{ .Prompt }}>"),
                                     ModelDefaults(system="S"), 100, "m", caps)
    assert isinstance(tpl, wire.CompletionRequest) and tpl.prompt == "<S|P>"
    chat = translate.generate_request(schemas.GenerateRequest(model="m", prompt="P"), ModelDefaults(), 100)
    mixed = translate.with_context(chat, "<rendered>", [5, 6])
    assert mixed.prompt == [5, 6, "<rendered>"] and mixed.n_predict == chat.n_predict


@pytest.mark.parametrize(
    ("vector", "dims", "expected"),
    [
        ([3.0, 4.0], 0, [0.6, 0.8]),
        ([3.0, 4.0, 12.0], 2, [0.6, 0.8]),
        ([3.0, 4.0], 5, [0.6, 0.8]),
        ([0.0, 0.0], 0, [0.0, 0.0]),
    ],
)
def test_normalize(vector, dims, expected):
    assert translate.normalize(vector, dims) == pytest.approx(expected)


def test_normalize_refuses_nan():
    with pytest.raises(LlamagateError):
        translate.normalize([math.nan, 1.0])


def test_parameters_text():
    text = translate.parameters_text({"temperature": 0.5, "stop": ["<|im_end|>", "x"]})
    assert text.splitlines() == [
        "temperature                    0.5",
        'stop                           "<|im_end|>"',
        'stop                           "x"',
    ]


def test_model_info():
    meta = {"general.architecture": "llama", "general.name": "N", "tokenizer.chat_template": "t",
            "llama.context_length": 8192, "tokenizer.ggml.tokens": SkippedArray(8, 49152),
            "general.languages": ["en"], "tokenizer.ggml.scores": [0.0] * 10}
    info = translate.model_info(meta, 135, verbose=False, name="smollm2")
    assert info == {"general.architecture": "llama", "general.basename": "smollm2", "general.languages": ["en"],
                    "general.parameter_count": 135, "llama.context_length": 8192, "tokenizer.ggml.scores": [],
                    "tokenizer.ggml.tokens": []}
    assert translate.model_info(meta, 135, verbose=True)["tokenizer.ggml.scores"] == [0.0] * 10


@pytest.mark.parametrize(
    ("metadata", "projector", "expected"),
    [
        ({"general.architecture": "llama", "tokenizer.chat_template": "{{ messages }}"}, False, ["completion"]),
        ({"general.architecture": "llama", "tokenizer.chat_template": "{% if tools %}"}, False, ["completion", "tools"]),
        ({"general.architecture": "qwen3", "tokenizer.chat_template": "<think>{{ tools }}"}, True,
         ["completion", "tools", "vision", "thinking"]),
        ({"general.architecture": "llama", "tokenizer.ggml.fim_pre_token_id": 1}, False, ["completion", "insert"]),
        ({"general.architecture": "bert", "bert.pooling_type": 1}, False, ["embedding"]),
        ({"general.architecture": "qwen3", "qwen3.pooling_type": 3}, False, ["completion", "embedding"]),
    ],
)
def test_capabilities(metadata, projector, expected):
    assert capabilities(GGUFInfo(metadata), projector=projector) == expected

