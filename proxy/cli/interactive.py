"""`llamagate run MODEL` on a terminal: the chat session of `ollama run`, with its commands
(/set, /show, /load, /save, /clear, /bye, /?), `\"\"\"` multi-line input and image paths, and
the messages Ollama prints for each."""

from __future__ import annotations

import json
from typing import Any

import click

from proxy.cli import answer
from proxy.cli.answer import RunOptions
from proxy.cli.client import Client, ClientError
from proxy.cli.images import ImageError, extract, paths_in
from proxy.cli.modelfile import ModelfileError, parameter
from proxy.cli.wordwrap import WordWrap

QUOTES = '"""'

USAGE = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
"""
USAGE_IMAGES = "Use /path/to/file to include .jpg, .png, or .webp images.\n"

USAGE_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set template <string> Set prompt template
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
"""

# What GNU readline, which reads the lines here, does with these keys.
USAGE_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
   Alt + b            Move back (left) one word
   Alt + f            Move forward (right) one word
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor

  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit llamagate (/bye)
"""

USAGE_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""

USAGE_PARAMETERS = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> <string> ...   Set the stop parameters
"""


def _help(text: str) -> None:
    click.echo(text, err=True)


def _value(v: Any) -> str:
    """A parameter's value as Go's %v prints it ([a b] for lists, 1 for 1.0)."""
    if isinstance(v, list):
        return "[" + " ".join(map(str, v)) + "]"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


class Session:
    """One chat: the options it sends, the conversation so far, and the commands that change them."""

    def __init__(self, client: Client, opts: RunOptions, think_set: bool) -> None:
        self.client = client
        self.opts = opts
        self.think_set = think_set  # by --think or /set: then /load doesn't decide it from the model
        self.multiline: str | None = None  # "prompt", "system" or "template" while inside """
        self.buffer: list[str] = []

    # The loop ------------------------------------------------------------------------------

    def run(self) -> None:
        import readline  # line editing and history for input(), as Ollama's readline gives

        self.readline = readline
        while True:
            try:
                line = input("... " if self.multiline else ">>> ")
            except EOFError:
                click.echo()
                return
            except KeyboardInterrupt:
                click.echo("\nUse Ctrl + d or /bye to exit.")
                self.multiline, self.buffer = None, []
                continue
            if self.line(line) is False:
                return

    def line(self, line: str) -> bool | None:
        """Handle one line typed; False ends the session."""
        if self.multiline:
            before, ended = (line[:-3], True) if line.endswith(QUOTES) else (line, False)
            self.buffer.append(before)
            if not ended:
                return None
            kind, self.multiline = self.multiline, None
            text, self.buffer = "\n".join(self.buffer), []
            if kind == "system":
                self.set_system(text)
            elif kind == "template":
                self.set_template(text)
            elif text:
                self.send(text)
            return None
        if line.startswith(QUOTES):
            rest = line[3:]
            if rest.endswith(QUOTES):
                self.send(rest[:-3])
            else:
                self.multiline, self.buffer = "prompt", [rest]
            return None
        words = line.split()
        command = words[0] if words else ""
        if command.startswith(("/exit", "/bye")):
            return False
        handler = {"/set": self.command_set, "/show": self.command_show, "/load": self.command_load,
                   "/save": self.command_save, "/clear": self.command_clear, "/list": self.command_list,
                   "/help": self.command_help, "/?": self.command_help}.get(command)
        if handler:
            handler(words[1:])
        elif command.startswith("/") and not (self.opts.vision and any(p.startswith(command) for p in paths_in(line))):
            click.echo(f"Unknown command '{command}'. Type /? for help")
        elif line.strip():
            self.send(line)
        return None

    # A turn --------------------------------------------------------------------------------

    def send(self, text: str) -> None:
        message: dict[str, Any] = {"role": "user", "content": text}
        if self.opts.vision:
            try:
                message["content"], images = extract(text)
            except ImageError as e:
                click.echo(f"Couldn't process image: {e}", err=True)
                return
            if images:
                message["images"] = images
        self.opts.messages.append(message)
        try:
            answered = answer.stream(self.client, "/api/chat", self.opts.request(messages=self.opts.messages),
                                     self.opts)
        except ClientError as e:
            # The turn is dropped, so the next message doesn't carry one the server refused.
            self.opts.messages.pop()
            click.echo(f"error: {e}")
            return
        if answered is None:
            return
        final, thinking, content = answered
        click.echo("\n")
        if self.opts.verbose:
            answer.summary(final)
        reply: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            reply["thinking"] = thinking
        self.opts.messages.append(reply)

    # /set ----------------------------------------------------------------------------------

    def set_system(self, text: str) -> None:
        self.opts.system = text
        message = {"role": "system", "content": text}
        if self.opts.messages and self.opts.messages[-1]["role"] == "system":
            self.opts.messages[-1] = message
        else:
            self.opts.messages.append(message)
        click.echo("Set system message.")

    def set_template(self, text: str) -> None:
        self.opts.template = text
        click.echo("Set prompt template.")

    def command_set(self, args: list[str]) -> None:
        if not args:
            _help(USAGE_SET)
            return
        what, rest = args[0], args[1:]
        if what in ("system", "template"):
            if not rest:
                _help(USAGE_SET)
                return
            text = " ".join(rest)
            if text.startswith(QUOTES):
                text = text[3:]
                if not text.endswith(QUOTES):
                    self.multiline, self.buffer = what, [text]
                    return
                text = text[:-3]
            (self.set_system if what == "system" else self.set_template)(text)
        elif what == "parameter":
            if len(rest) < 2:
                _help(USAGE_PARAMETERS)
                return
            try:
                self.opts.options[rest[0]] = parameter(rest[0], rest[1:])
            except ModelfileError as e:
                click.echo(f"Couldn't set parameter: {json.dumps(str(e))}")
                return
            click.echo(f"Set parameter '{rest[0]}' to '{', '.join(rest[1:])}'")
        elif what in ("history", "nohistory"):
            self.readline.set_auto_history(what == "history")
        elif what in ("wordwrap", "nowordwrap"):
            self.opts.word_wrap = what == "wordwrap"
            click.echo(f"Set '{what}' mode.")
        elif what in ("verbose", "quiet"):
            self.opts.verbose = what == "verbose"
            click.echo(f"Set '{what}' mode.")
        elif what in ("think", "nothink"):
            self.opts.think = (rest[0] if rest else True) if what == "think" else False
            self.think_set = True
            if "thinking" not in self.opts.capabilities:
                click.echo(f'warning: model "{self.opts.model}" does not support thinking output', err=True)
            click.echo(f"Set 'think' mode to '{rest[0]}'." if what == "think" and rest else f"Set '{what}' mode.")
        elif what == "format":
            if rest[:1] != ["json"]:
                click.echo("Invalid or missing format. For 'json' mode use '/set format json'")
                return
            self.opts.format = "json"
            click.echo("Set format to 'json' mode.")
        elif what == "noformat":
            self.opts.format = None
            click.echo("Disabled format.")
        else:
            click.echo(f"Unknown command '/set {what}'. Type /? for help")

    # /show ---------------------------------------------------------------------------------

    def command_show(self, args: list[str]) -> None:
        if not args:
            _help(USAGE_SHOW)
            return
        body: dict[str, Any] = {"model": self.opts.model}
        if self.opts.system:
            body["system"] = self.opts.system
        try:
            info = self.client.request("POST", "/api/show", json=body).json()
        except ClientError as e:
            click.echo(f"error: couldn't get model: {e}")
            return
        what = args[0]
        if what == "info":
            from proxy.cli.modelinfo import print_info

            print_info(info, verbose=False)
        elif what == "license":
            click.echo(info.get("license") or "No license was specified for this model.")
        elif what == "modelfile":
            click.echo(info.get("modelfile", ""))
        elif what == "parameters":
            click.echo("Model defined parameters:")
            lines = (info.get("parameters") or "").splitlines()
            for line in lines or ["No additional parameters were specified for this model."]:
                click.echo(f"  {line}")
            click.echo()
            if self.opts.options:
                click.echo("User defined parameters:")
                for key, value in self.opts.options.items():
                    click.echo(f"  {key:<30} {_value(value)}")
                click.echo()
        elif what == "system":
            system = self.opts.system or info.get("system")
            click.echo(f"{system}\n" if system else "No system message was specified for this model.")
        elif what == "template":
            template = self.opts.template or info.get("template")
            click.echo(template or "No prompt template was specified for this model.")
        else:
            click.echo(f"Unknown command '/show {what}'. Type /? for help")

    # /load, /save, /clear, /help -----------------------------------------------------------

    def command_load(self, args: list[str]) -> None:
        if len(args) != 1:
            click.echo("Usage:\n  /load <modelname>")
            return
        before = (self.opts.model, self.opts.capabilities, self.opts.loaded_messages, self.opts.think)
        self.opts.model = args[0]
        click.echo(f"Loading model '{self.opts.model}'")
        try:
            answer.prepare(self.client, self.opts, self.think_set)
            answer.load(self.client, self.opts)
        except ClientError as e:
            self.opts.model, self.opts.capabilities, self.opts.loaded_messages, self.opts.think = before
            click.echo(f"Couldn't find model '{args[0]}'" if "not found" in str(e) else f"error: {e}")
            return
        self.opts.messages = []

    def command_save(self, args: list[str]) -> None:
        if len(args) != 1:
            click.echo("Usage:\n  /save <modelname>")
            return
        body: dict[str, Any] = {"model": args[0], "from": self.opts.model}
        if self.opts.system:
            body["system"] = self.opts.system
        if self.opts.template:
            body["template"] = self.opts.template
        if self.opts.options:
            body["parameters"] = self.opts.options
        if self.opts.messages:
            # The model's own MESSAGEs came before this session's in every chat: the copy keeps both.
            body["messages"] = self.opts.loaded_messages + [
                {"role": m["role"], "content": m["content"]} for m in self.opts.messages]
        try:
            for _ in self.client.stream("/api/create", body):
                pass
        except ClientError as e:
            click.echo(f"error: {e}")
            return
        click.echo(f"Created new model '{args[0]}'")

    def command_list(self, args: list[str]) -> None:
        """`llamagate list [PREFIX]` inside the session (Ollama's session has it, unlisted in /?)."""
        from proxy.cli.tables import print_models

        try:
            print_models(self.client, args[0] if args else "")
        except ClientError as e:
            click.echo(f"error: {e}")

    def command_clear(self, _args: list[str]) -> None:
        self.opts.messages = [{"role": "system", "content": self.opts.system}] if self.opts.system else []
        click.echo("Cleared session context")

    def command_help(self, args: list[str]) -> None:
        topic = args[0] if args else ""
        if topic in ("set", "/set"):
            _help(USAGE_SET)
        elif topic in ("show", "/show"):
            _help(USAGE_SHOW)
        elif topic in ("shortcut", "shortcuts"):
            _help(USAGE_SHORTCUTS)
        elif not topic:
            _help(USAGE + (USAGE_IMAGES if self.opts.vision else ""))


def chat(client: Client, opts: RunOptions, info: dict[str, Any], think_set: bool) -> None:
    """Load the model under a spinner, print the conversation its MESSAGEs hold, then chat."""
    answer.load(client, opts)
    for message in info.get("messages") or []:
        if message["role"] == "user":
            click.echo(f">>> {message['content']}")
        elif message["role"] == "assistant":
            answer.write(message["content"], WordWrap() if opts.word_wrap else None)
            click.echo("\n")
    Session(client, opts, think_set).run()
