"""`llamagate run` as people use `ollama run`: the chat session in a pseudo-terminal (pexpect) with
its commands, and the flags of a one-shot run, against SmolLM2 on a real llama-server; thinking,
images, word wrap and a model pulled first (from the loopback registry of tests/registries.py)
against tests/fake_llama_server.py, since no small model here thinks or sees."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import signal
import socket
import threading
from datetime import datetime, timezone

import httpx
import pexpect
import pytest
from conftest import fake_upstream_server, llamagate_cmd
from registries import MODEL
from test_ollama_fake_upstream import THINKING_TEMPLATE, _metadata_gguf

from proxy.cli.client import Client, ClientError
from proxy.cli.images import ImageError, extract
from proxy.cli.modelfile import ModelfileError, parameter
from proxy.cli.wordwrap import WordWrap
from supervisor.durations import format_go_duration

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


@pytest.fixture(scope="module")
def short(server, tmp_path_factory):
    """SmolLM2 with answers cut short, so that each turn takes a fraction of a second."""
    mf = tmp_path_factory.mktemp("short") / "Modelfile"
    mf.write_text("FROM smollm2:135m\nPARAMETER num_predict 6\nPARAMETER temperature 0\n")
    server.cli("create", "smollm2-short", "-f", str(mf))
    return server


def _spawn(srv, *args: str, cwd=None, columns: int = 200, preexec_fn=None) -> pexpect.spawn:
    cmd = [*llamagate_cmd(), "run", *args]
    return pexpect.spawn(cmd[0], cmd[1:], env={**srv.env, "TERM": "xterm"}, encoding="utf-8", timeout=60,
                         cwd=cwd, dimensions=(40, columns), preexec_fn=preexec_fn)


def _shown(output: str) -> str:
    """What stays on the screen: the spinner's frames and the escapes that erase it taken out."""
    return re.sub(r"[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] |\r\x1b\[K|\r", "", output)


def _say(child: pexpect.spawn, line: str, *expected: str) -> None:
    child.sendline(line)
    for text in expected:
        child.expect_exact(text)


def test_a_session_with_its_commands(short):
    child = _spawn(short, "smollm2-short")
    # The spinner turns while the model loads, and is erased before the prompt.
    child.expect_exact("⠋")
    child.expect_exact(">>> ")
    _say(child, "/?", "/load <model>   Load a session or model", 'Use """ to begin a multi-line message.', ">>> ")
    _say(child, "/? set", "/set parameter ...     Set a parameter", ">>> ")
    _say(child, "/show", "/show modelfile    Show Modelfile for this model", ">>> ")
    _say(child, "/bogus", "Unknown command '/bogus'. Type /? for help", ">>> ")
    _say(child, "/set bogus", "Unknown command '/set bogus'. Type /? for help", ">>> ")
    _say(child, "/set parameter", "Available Parameters:", ">>> ")
    _say(child, "/set parameter num_predict 4", "Set parameter 'num_predict' to '4'", ">>> ")
    _say(child, "/set parameter stop Paris London", "Set parameter 'stop' to 'Paris, London'", ">>> ")
    _say(child, "/set parameter temperature warm", "Couldn't set parameter: \"invalid PARAMETER:", ">>> ")
    _say(child, "/set parameter nosuch 1", "Couldn't set parameter: \"unknown parameter 'nosuch'\"", ">>> ")
    _say(child, "/show parameters", "Model defined parameters:", "num_predict", "User defined parameters:")
    child.expect(r"num_predict\s{20,}4")
    child.expect(r"stop\s{20,}\[Paris London\]")
    _say(child, "/set system You answer in one word.", "Set system message.", ">>> ")
    _say(child, "/show system", "You answer in one word.", ">>> ")
    _say(child, '/set template """{{ .System }}', "... ")
    _say(child, '{{ .Prompt }}"""', "Set prompt template.", ">>> ")
    _say(child, "/show template", "{{ .System }}\r\n{{ .Prompt }}", ">>> ")
    _say(child, "/show license", "No license was specified for this model.", ">>> ")
    _say(child, "/? shortcuts", "Ctrl + d            Exit llamagate (/bye)", ">>> ")
    # Line editing and history are readline's: Up brings the last line back...
    _say(child, "\x1b[A\x1b[A", "No license was specified for this model.", ">>> ")
    # ...until /set nohistory: then Up finds that command, which prints nothing.
    _say(child, "/set nohistory", ">>> ")
    _say(child, "/show license", "No license was specified for this model.", ">>> ")
    _say(child, "\x1b[A")
    child.expect_exact(">>> ")
    assert "No license" not in child.before
    _say(child, "/set history", ">>> ")
    _say(child, "/show info", "Model", "architecture", "llama", ">>> ")
    _say(child, "/show modelfile", "FROM ", "PARAMETER num_predict 6", ">>> ")
    _say(child, "/set verbose", "Set 'verbose' mode.", ">>> ")
    # A message over three lines: the continuation prompt, then one answer with the timings.
    _say(child, '"""Name a colour', "... ")
    _say(child, "of the sky", "... ")
    _say(child, 'in one word."""', "total duration:")
    child.expect(r"eval count:\s+(\d+) token\(s\)")
    child.expect(r"eval count:\s+(\d+) token\(s\)")
    assert int(child.match.group(1)) <= 4  # the session's num_predict, not the model's 6
    child.expect(r"eval rate:\s+[\d.]+ tokens/s")
    child.expect_exact(">>> ")
    _say(child, "/set quiet", "Set 'quiet' mode.", ">>> ")
    _say(child, "/set format yaml", "Invalid or missing format. For 'json' mode use '/set format json'", ">>> ")
    _say(child, "/set format json", "Set format to 'json' mode.", ">>> ")
    _say(child, "Describe a cat.")
    child.expect_exact(">>> ")
    assert _shown(child.before).split("Describe a cat.", 1)[1].strip().startswith("{")
    _say(child, "/set noformat", "Disabled format.", ">>> ")
    # Ctrl+C at the prompt doesn't end the session.
    child.sendintr()
    child.expect_exact("Use Ctrl + d or /bye to exit.")
    child.expect_exact(">>> ")
    _say(child, "/save", "Usage:", "/save <modelname>", ">>> ")
    _say(child, "/save smollm2-saved", "Created new model 'smollm2-saved'", ">>> ")
    _say(child, "/save Bad:Name:Here", "error: ", ">>> ")
    _say(child, "/clear", "Cleared session context", ">>> ")
    _say(child, "/load nosuch", "Loading model 'nosuch'", "Couldn't find model 'nosuch'", ">>> ")
    _say(child, "/load smollm2-saved", "Loading model 'smollm2-saved'", ">>> ")
    _say(child, "/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    saved = httpx.post(f"{short.url}/api/show", json={"model": "smollm2-saved"}).json()
    assert saved["system"] == "You answer in one word."
    assert saved["template"] == "{{ .System }}\n{{ .Prompt }}"
    assert re.search(r"num_predict\s+4", saved["parameters"]) and re.search(r'stop\s+"Paris"', saved["parameters"])
    roles = [(m["role"], m["content"]) for m in saved["messages"]]
    assert roles[:2] == [("system", "You answer in one word."), ("user", "Name a colour\nof the sky\nin one word.")]
    assert roles[2][0] == "assistant" and roles[2][1].strip()
    # Run again, the saved model's conversation is printed before the first prompt, as `ollama run` does.
    child = _spawn(short, "smollm2-saved")
    child.expect_exact(">>> Name a colour\r\nof the sky\r\nin one word.")
    child.expect_exact(roles[2][1].strip().splitlines()[0])
    child.expect_exact(">>> Describe a cat.")
    child.expect_exact(">>> ")  # the prompt, after the last saved answer
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_one_shot_flags(short):
    # Piped input goes before the prompt's words.
    r = short.cli("run", "smollm2-short", "--format", "json", "--verbose", "--keepalive", "90s", "a cat.",
                  input="Describe")
    assert r.stdout.lstrip().startswith("{") and r.stdout.endswith("\n\n")
    assert re.search(r"^total duration:\s+[\d.]+m?s$", r.stderr, re.M)
    assert re.search(r"^eval count:\s+[1-6] token\(s\)$", r.stderr, re.M)
    assert "⠋" not in r.stderr  # no spinner where standard error is no terminal
    (loaded,) = [m for m in httpx.get(f"{short.url}/api/ps").json()["models"] if m["name"] == "smollm2-short:latest"]
    left = datetime.fromisoformat(loaded["expires_at"]) - datetime.now(timezone.utc)
    assert 30 < left.total_seconds() <= 90
    r = short.cli("run", "smollm2-short", "--keepalive", "soon", "hi", check=False)
    assert r.returncode == 1 and 'time: invalid duration "soon"' in r.stderr
    r = short.cli("run", "smollm2-short", "--format", "{nope", "hi", check=False)
    assert r.returncode == 1 and "neither json nor a JSON schema" in r.stderr
    r = short.cli("run", "smollm2-short", "--think", "hi", check=False)
    assert r.returncode == 1 and '"smollm2-short" does not support thinking' in r.stderr
    r = short.cli("run", "smollm2-short", "--think=maybe", "hi", check=False)
    assert r.returncode == 2 and "--think" in r.stderr


@pytest.fixture(scope="module")
def fake(tmp_path_factory, registry):
    tmp = tmp_path_factory.mktemp("fake-run")
    srv = fake_upstream_server(tmp, env={"LLAMAGATE_REGISTRY_MIRRORS": f"registry.ollama.ai={registry.url}"})
    try:
        ggufs = {"thinker.gguf": _metadata_gguf(tmp / "thinker.gguf", "qwen3",
                                                **{"tokenizer.chat_template": THINKING_TEMPLATE}),
                 "vision.gguf": _metadata_gguf(tmp / "vision.gguf", "llama"),
                 "mmproj.gguf": _metadata_gguf(tmp / "mmproj.gguf", "clip")}
        files = {}
        for name, path in ggufs.items():
            files[name] = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
            httpx.post(f"{srv.url}/api/blobs/{files[name]}", content=path.read_bytes()).raise_for_status()
        for model, names in (("thinker", ["thinker.gguf"]), ("vision", ["vision.gguf", "mmproj.gguf"])):
            body = {"model": model, "files": {n: files[n] for n in names}, "stream": False}
            httpx.post(f"{srv.url}/api/create", json=body).raise_for_status()
        yield srv
    finally:
        srv.stop()


def _last_chat(srv) -> dict:
    return [r for r in srv.requests() if r.get("path") == "/v1/chat/completions"][-1]["body"]


def test_thinking_is_shown_hidden_or_off(fake):
    # A model that can think thinks unless told otherwise, as with `ollama run`.
    out = fake.cli("run", "thinker", "hi").stdout
    assert out == "Thinking...\nLet me think.\n...done thinking.\n\nHi there\n\n"
    assert fake.cli("run", "thinker", "--hidethinking", "hi").stdout == "Hi there\n\n"
    assert _last_chat(fake)["chat_template_kwargs"] == {"enable_thinking": True}
    fake.cli("run", "thinker", "--think=high", "hi")
    assert _last_chat(fake)["chat_template_kwargs"] == {"enable_thinking": True, "reasoning_effort": "high"}
    # In a session, the thinking is grey on a terminal, and /set nothink turns it off.
    child = _spawn(fake, "thinker")
    child.expect_exact(">>> ")
    _say(child, "hi", "\x1b[38;5;245m\x1b[1mThinking...\r\n", "Let me think.", "...done thinking.", "Hi there", ">>> ")
    _say(child, "/set nothink", "Set 'nothink' mode.", ">>> ")
    _say(child, "hi again", "Hi there", ">>> ")
    assert "Thinking" not in child.before
    assert _last_chat(fake)["chat_template_kwargs"] == {"enable_thinking": False}
    _say(child, "/set think high", "Set 'think' mode to 'high'.", ">>> ")
    # A model that can't see takes a line that starts with an image's path for a command.
    _say(child, "/tmp/a\\ cat.png describe it", "Unknown command '/tmp/a\\'. Type /? for help", ">>> ")
    _stop_an_answer_then_leave(child)


def _stop_an_answer_then_leave(child: pexpect.spawn) -> None:
    """Ctrl+C stops an answer (the fake takes a second a piece), not the session; /bye ends it."""
    _say(child, "SLOW:1 take your time", "Thinking...")
    child.sendintr()
    child.expect_exact(">>> ", timeout=5)
    assert "done thinking" not in child.before
    _say(child, "/bye")
    child.expect(pexpect.EOF)


def test_ctrl_c_works_in_a_run_started_with_sigint_ignored(fake):
    """A non-interactive shell starts what it backgrounds with SIGINT ignored (`sh -c 'cmd &'`),
    and Python keeps it so; `ollama run` takes it back, and so does `llamagate run`."""
    child = _spawn(fake, "thinker", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    child.expect_exact(">>> ")
    child.sendintr()
    child.expect_exact("Use Ctrl + d or /bye to exit.", timeout=5)
    _stop_an_answer_then_leave(child)


def test_image_paths_in_a_prompt(fake, tmp_path):
    (tmp_path / "a cat.png").write_bytes(PNG)
    (tmp_path / "notes.png").write_text("not an image")
    encoded = base64.b64encode(PNG).decode()
    r = fake.cli("run", "vision", f"What is in {tmp_path}/a\\ cat.png ?")
    # (The fake reasons unless told not to, and a model that can't think is never told.)
    assert f"Added image '{tmp_path}/a cat.png'" in r.stderr and r.stdout.endswith("Hi there\n\n")
    (message,) = _last_chat(fake)["messages"]
    assert message["content"] == [{"type": "text", "text": "What is in  ?"},
                                  {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}}]
    r = fake.cli("run", "vision", f"Look at {tmp_path}/notes.png", check=False)
    assert r.returncode == 1 and "invalid image type" in r.stderr
    # In a session a line may start with the path: it is a prompt, not an unknown command.
    child = _spawn(fake, "vision")
    child.expect_exact(">>> ")
    _say(child, "/?", "Use /path/to/file to include .jpg, .png, or .webp images.", ">>> ")
    _say(child, f"'{tmp_path}/a cat.png' describe it", f"Added image '{tmp_path}/a cat.png'", "Hi there", ">>> ")
    assert _last_chat(fake)["messages"][-1]["content"][0] == {"type": "text", "text": "describe it"}
    _say(child, f"{tmp_path}/notes.png what is it", "Couldn't process image: invalid image type", ">>> ")
    _say(child, "/missing/file.png hello", "Hi there", ">>> ")  # no such file: the text is sent as it is
    _say(child, "/bye")
    child.expect(pexpect.EOF)


@pytest.mark.parametrize("ns, text", [
    (0, "0s"), (999, "999ns"), (1_500, "1.5µs"), (350_200_000, "350.2ms"), (1_000_000, "1ms"),
    (1_500_000_000, "1.5s"), (60_000_000_000, "1m0s"), (125_250_000_000, "2m5.25s"),
    (3_600_000_000_000, "1h0m0s"), (-2_000_000_000, "-2s"),
])
def test_go_durations(ns, text):
    assert format_go_duration(ns) == text


def test_parameters_are_typed_as_their_options():
    assert parameter("num_ctx", ["2048"]) == 2048 and parameter("stop", ["a", "b"]) == ["a", "b"]
    assert parameter("use_mmap", ["true"]) is True and parameter("top_p", ["0.5"]) == 0.5
    for key, value in (("temperature", "warm"), ("nosuch", "1")):
        with pytest.raises(ModelfileError):
            parameter(key, [value])


def test_image_paths_are_found_unescaped_and_removed(tmp_path):
    (tmp_path / "x (1).jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 20)
    (tmp_path / "big.webp").write_bytes(b"RIFF\0\0\0\0WEBPVP8 ")
    text, images = extract(f"see {tmp_path}/x\\ \\(1\\).jpg and '{tmp_path}/big.webp' and /nowhere.png")
    assert text == "see  and  and /nowhere.png" and len(images) == 2
    assert base64.b64decode(images[1]).startswith(b"RIFF")
    (tmp_path / "fake.jpg").write_text("hello")
    with pytest.raises(ImageError, match="invalid image type"):
        extract(f"{tmp_path}/fake.jpg")
    assert json.dumps(extract("no paths here")) == '["no paths here", []]'


def test_a_server_lost_mid_answer_is_an_error_not_a_traceback():
    class Cut(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            line = b'{"message": {"role": "assistant", "content": "Hel"}, "done": false}\n'
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

        def log_message(self, *a):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Cut)
    threading.Thread(target=httpd.handle_request, daemon=True).start()
    chunks = Client(f"http://127.0.0.1:{httpd.server_address[1]}").stream("/api/chat", {"model": "m"})
    assert next(chunks)["message"]["content"] == "Hel"
    with pytest.raises(ClientError, match="lost the connection to the server"):
        next(chunks)
    httpd.server_close()


def test_a_model_not_found_is_pulled_first(fake, registry, tiny_gguf):
    registry.publish("test/pulled:v1", [(MODEL, tiny_gguf.read_bytes())])
    r = fake.cli("run", "test/pulled:v1", "--think=false", "hi")
    # `llamagate pull`'s display (each step once, standard error being no terminal), then the answer.
    steps = r.stderr.splitlines()
    assert steps[0] == "pulling manifest" and steps[-1] == "success"
    assert any(re.fullmatch(r"pulling [0-9a-f]{12}\.\.\. 100% ▕█{25}▏ .+", line) for line in steps)
    assert r.stdout == "MIDDLE\n\n"  # the fake's answer to a prompt without a chat template (the tiny model's)
    assert fake.cli("run", "test/pulled:v1", "--think=false", "hi").stderr == ""  # there now: no pull
    listed = fake.cli("list", "TEST/").stdout  # `list PREFIX`, in any case, as `ollama list PREFIX`
    assert "test/pulled:v1" in listed and "thinker" not in listed
    r = fake.cli("run", "test/nosuch", "hi", check=False)
    assert r.returncode == 1 and r.stderr.splitlines()[-1] == "Error: pull model manifest: file does not exist"
    r = fake.cli("run", "Bad:Name:Here", "hi", check=False)  # refused by /api/show (400): nothing pulled
    assert r.returncode == 1 and "pulling" not in r.stderr


def _screen(output: str) -> list[str]:
    """The lines a terminal shows for `output`: text, \\r, \\n, the cursor moved left (ESC [n D) and
    the line cleared from the cursor (ESC [K); a character a column."""
    lines, column = [""], 0
    for token in re.findall(r"\x1b\[(\d*)([DK])|(\r)|(\n)|(.)", output, re.S):
        count, code, cr, nl, ch = token
        if code == "D":
            column -= int(count or 1)
        elif code == "K":
            lines[-1] = lines[-1][:column]
        elif cr:
            column = 0
        elif nl:  # a terminal's \n: the next line's start, as the pty's onlcr makes it
            lines.append("")
            column = 0
        else:
            lines[-1] = lines[-1][:column].ljust(column) + ch + lines[-1][column + 1:]
            column += 1
    return lines


SENTENCE = "the quick brown fox jumps over the lazy dog while seven zebras watch it from afar"


def test_answers_wrap_at_the_terminal_width_unless_nowordwrap(fake):
    child = _spawn(fake, "thinker", "--think=false", columns=40)
    child.expect_exact(">>> ")
    child.sendline("ECHO:" + SENTENCE)
    child.expect_exact(">>> ")
    answer = [line for line in _screen(child.before)[1:] if line.strip()]
    # Lines end before the word that would come within 5 columns of the edge (35 here), no word cut.
    assert answer == ["the quick brown fox jumps over the ", "lazy dog while seven zebras watch ",
                      "it from afar"]
    _say(child, "/set nowordwrap", "Set 'nowordwrap' mode.", ">>> ")
    child.sendline("ECHO:" + SENTENCE)
    child.expect_exact(SENTENCE + "\r\n")  # one line: the terminal folds it, where it may cut a word
    child.expect_exact(">>> ")
    _say(child, "/set wordwrap", "Set 'wordwrap' mode.", ">>> ")
    # /list is `llamagate list` (a prefix narrows it), as in Ollama's session.
    _say(child, "/list", ">>> ")
    assert re.search(r"NAME\s+ID\s+SIZE\s+MODIFIED", child.before)
    assert "thinker:latest" in child.before and "vision:latest" in child.before
    _say(child, "/list THINK", ">>> ")
    assert "thinker:latest" in child.before and "vision" not in child.before
    _say(child, "/bye")
    child.expect(pexpect.EOF)
    child = _spawn(fake, "thinker", "--think=false", "--nowordwrap", columns=40)
    child.expect_exact(">>> ")
    child.sendline("ECHO:" + SENTENCE)
    child.expect_exact(SENTENCE + "\r\n")
    child.expect_exact(">>> ")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)


def test_word_wrap_of_wide_characters_and_long_words():
    wrap = WordWrap()
    # Width 20: lines up to 15 columns; pieces of one stream share the column and the word.
    assert _screen(wrap.feed("one two three ", 20) + wrap.feed("four five", 20)) == [
        "one two three ", "four five"]
    # A wide character takes two columns, and a line may break after it.
    assert _screen(WordWrap().feed("日本語の文章はとても長いです", 20)) == ["日本語の文章はと", "ても長いです"]
    # A word too long to move breaks at the margin.
    assert _screen(WordWrap().feed("a " + "x" * 30, 20)) == ["a xxxxxxxxxxxxx", "xxxxxxxxxxxxxxx", "xx"]
    assert WordWrap().feed("no terminal " * 5, 0) == "no terminal " * 5
