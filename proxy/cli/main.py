"""The `llamagate` command: `serve` runs the server; the other commands are its clients."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from proxy.cli.client import Client, ClientError
from proxy.cli.tables import human_since, print_models, table
from proxy.service.logs import FORMATS, LEVELS
from supervisor.config import Config
from supervisor.errors import LlamagateError
from supervisor.runtime.layout import BACKENDS, DEFAULT_TAG

# What only some commands need (msgspec schemas, httpx, the installer) is imported inside them, so
# that the client commands start fast (`--version` alone is answered before this module: entry.py).
if TYPE_CHECKING:
    from proxy.cli.progress import PullDisplay


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from proxy.cli.version import version_lines

    click.echo("\n".join(version_lines()))
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show llamagate's version, the Ollama API version and the llama-server build in use.")
def main() -> None:
    """llamagate: Ollama's API in front of llama.cpp's llama-server."""


def _settings(**flags: Any) -> Config:
    """The settings `serve` would run with; a bad one ends the command with its one-line message."""
    try:
        return Config.load(**flags)
    except ValueError as e:
        click.echo(f"llamagate: {e}", err=True)
        sys.exit(1)


def _settings_options(command: Any) -> Any:
    """The flags that are settings, shared by `serve` and `config`."""
    options = [
        click.option("--llama-server", "llama_server", help="Path of the llama-server binary to run models with."),
        click.option("--threads", type=int, help="CPU threads per llama-server (default: half the logical CPUs)."),
        click.option("--upstream", multiple=True, metavar="NAME=URL[,URL…]",
                     help="Serve NAME from an already running llama-server (repeatable; several URLs share "
                          "the load)."),
        click.option("--rpc", multiple=True, metavar="NAME=HOST:PORT[,HOST:PORT…]",
                     help="Split model NAME over llama.cpp RPC workers (repeatable)."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="TOML settings file (default: LLAMAGATE_CONFIG, or config.toml in llamagate's "
                          "config folder when it exists)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
@_settings_options
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level (as --log-level debug or OLLAMA_DEBUG=1).")
@click.option("--log-level", type=click.Choice(LEVELS), envvar="LLAMAGATE_LOG_LEVEL", show_envvar=True,
              help="Least level logged (default: info; every request is logged at info).")
@click.option("--log-format", type=click.Choice(FORMATS), default="text", envvar="LLAMAGATE_LOG_FORMAT",
              show_envvar=True, help="json: one JSON object a line, for journald, Loki and the like.")
@click.option("--drain-timeout", type=float, default=30.0, envvar="LLAMAGATE_DRAIN_TIMEOUT", show_envvar=True,
              help="Seconds that requests in flight get to finish after SIGTERM (default 30).")
def serve(verbose: bool, log_level: str | None, log_format: str, drain_timeout: float, **flags: Any) -> None:
    """Serve the Ollama and OpenAI APIs on OLLAMA_HOST (default 127.0.0.1:11434)."""
    from proxy.app import create_app
    from proxy.service import logs
    from proxy.service.notify import Notifier
    from proxy.service.server import run

    # Nothing the server or its runners create (store folders, blobs, runtime builds) is writable
    # by other users, whatever umask it was started with (0 in some containers).
    os.umask(os.umask(0o022) | 0o022)
    logs.configure(logs.level_of(log_level, verbose, os.environ), log_format)
    notifier = Notifier.from_env(os.environ)
    config = _settings(**flags)
    try:
        app = create_app(config, notifier)  # reads the keys files: one that can't be read stops us here
    except (ValueError, OSError, LlamagateError) as e:
        _fail(str(e.message if isinstance(e, LlamagateError) else e))
    run(app, config, notifier, drain_timeout)


@main.command("config")
@_settings_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object: name → {value, source}.")
def config_(as_json: bool, **flags: Any) -> None:
    """Print the settings `serve` would run with, and where each comes from, then the GPUs it would use."""
    settings = _settings(**flags)
    rows = [*settings.describe(), _gpus_row(settings)]
    if as_json:
        click.echo(json.dumps({name: {"value": value, "source": source} for name, value, source in rows}, indent=2))
        return
    for name, value, source in rows:
        click.echo(f"{name} = {value}  ({source})")


def _gpus_row(settings: Config) -> tuple[str, str, str]:
    """The GPUs of the llama-server `serve` would run, as a row of `llamagate config`."""
    from supervisor.errors import LlamagateError
    from supervisor.runtime.binary import find_llama_server
    from supervisor.runtime.devices import list_devices

    try:
        binary = find_llama_server(settings.llama_server, settings.runtime_dir).path
    except LlamagateError:
        return "gpus", "(unknown)", "no llama-server found yet: listed at its first load"
    devices = list_devices(binary)
    return "gpus", "; ".join(d.describe() for d in devices) or "none", f"{binary} --list-devices"


@main.command("list")
@click.argument("prefix", default="")
def list_(prefix: str) -> None:
    """List the models in the store (those whose name starts with PREFIX)."""
    try:
        print_models(Client(), prefix)
    except ClientError as e:
        _fail(str(e))


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


@main.command()
@click.argument("name")
@click.option("-f", "--file", "modelfile", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default="Modelfile", show_default=True, help="The Modelfile to build from.")
@click.option("-q", "--quantize", default="", metavar="TYPE",
              help="Quantize an F16/BF16/F32 model to TYPE (q4_K_M, q8_0, ...) with llama-quantize.")
def create(name: str, modelfile: Path, quantize: str) -> None:
    """Create a model from a Modelfile (FROM a local .gguf file or an existing model)."""
    from proxy.cli.modelfile import ModelfileError, parse

    try:
        mf = parse(modelfile.read_text())
    except (ModelfileError, OSError) as e:
        _fail(f"{modelfile}: {e}")
    client = Client()
    body: dict[str, Any] = {"model": name, "parameters": mf.parameters, "messages": mf.messages}
    for key, value in (("template", mf.template), ("system", mf.system)):
        if value is not None:
            body[key] = value
    body.update((key, value) for key, value in (("renderer", mf.renderer), ("parser", mf.parser),
                                                ("requires", mf.requires)) if value)
    if mf.license:
        body["license"] = mf.license
    if quantize:
        body["quantize"] = quantize
    source = (modelfile.parent / Path(mf.from_).expanduser()).resolve()
    try:
        if source.is_file():
            click.echo("gathering model components")
            digest = _sha256(source)
            if not client.exists(f"/api/blobs/{digest}"):
                click.echo(f"copying file {digest}")
                with open(source, "rb") as f:
                    client.request("POST", f"/api/blobs/{digest}", content=f)
            body["files"] = {source.name: digest}
        elif mf.from_.startswith((".", "/", "~")) or mf.from_.endswith(".gguf"):
            _fail(f"FROM {mf.from_}: file not found")
        else:
            body["from"] = mf.from_
        _create_progress(client.stream("/api/create", body))
    except ClientError as e:
        _fail(str(e))


def _create_progress(lines: Iterator[dict[str, Any]]) -> None:
    """Each status once; a step with a total (quantizing) as a percentage, redrawn in place on a
    terminal, printed once at its end elsewhere."""
    terminal = sys.stdout.isatty()
    shown = ""
    for line in lines:
        status, total = line["status"], line.get("total", 0)
        if total:
            done = line.get("completed", 0)
            if terminal:
                click.echo(f"\r{status} {100 * done // total}%", nl=done == total)
            elif done == total:
                click.echo(f"{status} 100%")
        elif status != shown:
            click.echo(status)
        shown = status


class _Terminal:
    """Redraws the display in place on a terminal; elsewhere (a log, a pipe) prints each step
    and each finished layer once."""

    def __init__(self, display: PullDisplay) -> None:
        self.display = display
        self.tty = sys.stderr.isatty()
        self.drawn = 0
        self.printed = 0
        self.last_draw = 0.0
        self.done: set[str] = set()

    def show(self, final: bool = False) -> None:
        if self.tty:
            now = time.monotonic()
            if final or now - self.last_draw >= 0.1:
                lines = self.display.render()
                up = f"\x1b[{self.drawn}A" if self.drawn else ""
                sys.stderr.write(up + "".join(f"\r\x1b[2K{line}\n" for line in lines))
                sys.stderr.flush()
                self.drawn, self.last_draw = len(lines), now
            return
        for item in self.display.lines[self.printed:]:
            if isinstance(item, str):
                click.echo(item, err=True)
                self.printed += 1
            elif item.total and item.completed >= item.total:
                click.echo(item.render(self.display.label(item)), err=True)
                self.printed += 1
            else:
                break


def _transfer_options(command: Any) -> Any:
    """`pull`'s and `push`'s arguments."""
    command = click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (for scripts).")(command)
    command = click.option("--insecure", is_flag=True, help="Allow plain HTTP to the registry.")(command)
    return click.argument("name")(command)


@main.command()
@_transfer_options
def pull(name: str, insecure: bool, quiet: bool) -> None:
    """Pull a model from a registry (registry.ollama.ai, hf.co/<user>/<repo>[:<quant>], ...)."""
    _transfer("/api/pull", "pulling", name, insecure, quiet)


def _transfer(path: str, verb: str, name: str, insecure: bool, quiet: bool) -> None:
    """A pull's or push's progress drawn on standard error; its error, as `ollama` words it."""
    from proxy.cli.progress import PullDisplay

    display = PullDisplay(verb=verb)
    terminal = _Terminal(display)
    try:
        for event in Client().stream(path, {"model": name, "insecure": insecure}):
            display.update(event)
            if not quiet:
                terminal.show()
    except ClientError as e:
        if not quiet:
            terminal.show(final=True)
        message = str(e)
        if path == "/api/push" and ("access denied" in message.lower() or "unauthorized" in message.lower()):
            message = "you are not authorized to push to this namespace, create the model under a namespace you own"
        _fail(message)
    if not quiet:
        terminal.show(final=True)


@main.command()
@_transfer_options
def push(name: str, insecure: bool, quiet: bool) -> None:
    """Push a model to a registry (a name with your namespace: NAMESPACE/MODEL[:TAG], HOST/NAMESPACE/MODEL)."""
    _transfer("/api/push", "pushing", name, insecure, quiet)
    if quiet:
        return
    from supervisor.names import DEFAULT_HOST, ModelName

    pushed = ModelName.parse(name)
    where = (f"https://ollama.com/{pushed.display.removesuffix(':latest')}" if pushed.host.lower() == DEFAULT_HOST
             else f"{pushed.host}/{pushed.namespace}/{pushed.model}:{pushed.tag}")
    click.echo(f"\nYou can find your model at:\n\n\t{where}")


class _RunCommand(click.Command):
    """`--think` alone means true and never takes the next word, which is the prompt (as pflag's
    optional values in `ollama run`); a level goes after `=`: `--think=high`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, ["--think=true" if a == "--think" else a for a in args])


@main.command(cls=_RunCommand)
@click.argument("model")
@click.argument("prompt", nargs=-1)
@click.option("--format", "format_", metavar="json|SCHEMA", help="Response format: json, or a JSON schema.")
@click.option("--think", type=click.Choice(["true", "false", "high", "medium", "low", "max"]),
              help="Thinking for models that can: --think, --think=false, or a level (--think=high).")
@click.option("--hidethinking", is_flag=True, help="Hide the model's thinking (it still thinks).")
@click.option("--keepalive", metavar="DURATION", help="How long the model stays loaded after this (e.g. 5m).")
@click.option("--verbose", is_flag=True, help="Show timings after each answer.")
@click.option("--nowordwrap", is_flag=True, help="Don't wrap words to the next line at the terminal's width.")
@click.option("--insecure", is_flag=True, help="Allow plain HTTP to the registry, for a model pulled first.")
def run(model: str, prompt: tuple[str, ...], format_: str | None, think: str | None, hidethinking: bool,
        keepalive: str | None, verbose: bool, nowordwrap: bool, insecure: bool) -> None:
    """Answer PROMPT with MODEL, or chat with it until /bye when no prompt is given (a model the
    server doesn't have is pulled first)."""
    from proxy.cli import answer
    from proxy.cli.images import ImageError

    # Ctrl+C stops an answer even where run was started with SIGINT ignored (what a
    # non-interactive shell does to a command it runs in the background), as in `ollama run`,
    # whose Go signal.Notify takes an ignored SIGINT back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        opts = answer.RunOptions.from_flags(model, format_, think, hidethinking, keepalive, verbose, nowordwrap)
    except ValueError as e:
        _fail(str(e))
    words = list(prompt)
    if not sys.stdin.isatty():
        words[:0] = [piped] if (piped := sys.stdin.read()) else []
    text = " ".join(words)
    client = Client()
    try:
        try:
            info = answer.prepare(client, opts, think is not None)
        except ClientError as e:
            if e.status != 404:
                raise
            # As `ollama run`: a model the server doesn't have is pulled, as `pull` does, then run.
            _transfer("/api/pull", "pulling", model, insecure, quiet=False)
            info = answer.prepare(client, opts, think is not None)
        if words or not (sys.stdin.isatty() and sys.stdout.isatty()):
            answer.generate_once(client, opts, text)
            return
        from proxy.cli.interactive import chat

        chat(client, opts, info, think is not None)
    except (ClientError, ImageError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        click.echo()


def _human_until(expires: datetime) -> str:
    """`ollama ps`'s UNTIL column."""
    seconds = expires.timestamp() - time.time()
    if seconds > 100 * 365 * 86400:
        return "Forever"
    if seconds <= 0:
        return "Stopping..."
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{'About an' if unit == 'hour' and n == 1 else n} {unit}{'s' if n > 1 else ''} from now"
    return "Less than a second from now"


@main.command()
def ps() -> None:
    """List the models loaded in memory."""
    from proxy.cli.progress import human_bytes
    from supervisor.runtime.devices import processor

    try:
        models = Client().request("GET", "/api/ps").json()["models"]
    except ClientError as e:
        _fail(str(e))
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in models:
        size = m["size"]
        until = _human_until(datetime.fromisoformat(m["expires_at"]))
        if m.get("loading"):
            until = f"Loading ({round(m.get('load_seconds') or 0)}s)"
        if m.get("queued"):
            until += f", {m['queued']} queued"
        rows.append([m["name"], m["digest"][:12], human_bytes(size), processor(size, m.get("size_vram", 0)),
                     str(m.get("context_length", "")), until])
    table(rows)


@main.command()
@click.argument("model")
@click.option("--license", "part", flag_value="license", help="Show the license.")
@click.option("--modelfile", "part", flag_value="modelfile", help="Show the Modelfile.")
@click.option("--parameters", "part", flag_value="parameters", help="Show the parameters.")
@click.option("--system", "part", flag_value="system", help="Show the system prompt.")
@click.option("--template", "part", flag_value="template", help="Show the template.")
@click.option("-v", "--verbose", is_flag=True, help="Show every metadata key, long arrays included.")
def show(model: str, part: str | None, verbose: bool) -> None:
    """Show information about a model."""
    try:
        info = Client().request("POST", "/api/show", json={"model": model, "verbose": verbose}).json()
    except ClientError as e:
        _fail(str(e))
    if part:
        click.echo(info.get(part, ""))
        return
    from proxy.cli.modelinfo import print_info

    print_info(info, verbose)


@main.command()
@click.argument("source")
@click.argument("destination")
def cp(source: str, destination: str) -> None:
    """Copy a model (an alias: the copy shares the original's files)."""
    try:
        Client().request("POST", "/api/copy", json={"source": source, "destination": destination})
    except ClientError as e:
        _fail(str(e))
    click.echo(f"copied '{source}' to '{destination}'")


@main.command()
@click.argument("models", nargs=-1, required=True)
def rm(models: tuple[str, ...]) -> None:
    """Remove models (and the files no other model uses)."""
    client = Client()
    for model in models:
        try:
            client.request("DELETE", "/api/delete", json={"model": model})
        except ClientError as e:
            _fail(str(e))
        click.echo(f"deleted '{model}'")


@main.command()
@click.argument("model")
def stop(model: str) -> None:
    """Unload a running model now."""
    try:
        loaded = Client().request("GET", "/api/ps").json()["models"]
        name = model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"
        if not any(m["name"] == name or m["model"] == model for m in loaded):
            _fail(f"couldn't find model \"{model}\" to stop")
        Client().request("POST", "/api/generate", json={"model": model, "keep_alive": 0})
    except ClientError as e:
        _fail(str(e))


@main.command("rpc-worker")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on: a private network's only, since RPC has no authentication.")
@click.option("--port", default=50052, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("-t", "--threads", type=click.IntRange(1), help="CPU threads (default: rpc-server's own).")
@click.option("-c", "--cache", is_flag=True, help="Keep the tensors sent here in a local cache, for faster reloads.")
def rpc_worker(host: str, port: int, threads: int | None, cache: bool) -> None:
    """Lend this machine to a model split over llama.cpp RPC (`--rpc` on the serving host).

    Runs the rpc-server (ggml-rpc-server in newer builds) of the llama.cpp build `serve` would
    use, in place of this command, so that a worker machine needs only llamagate.
    """
    from supervisor.runners.rpc import rpc_server_of
    from supervisor.runtime.binary import find_llama_server
    from supervisor.runtime.environment import clean_env

    config = _settings()
    try:
        llama_server = find_llama_server(config.llama_server, config.runtime_dir).path
    except LlamagateError as e:
        _fail(e.message)
    binary = rpc_server_of(llama_server)
    if binary is None:
        _fail(f"the llama.cpp build at {llama_server.parent} has no rpc-server: it was built without RPC "
              "(-DGGML_RPC=ON); install one that has it (contrib/setup.sh builds one)")
    args = [str(binary), "--host", host, "--port", str(port), *(["--threads", str(threads)] if threads else []),
            *(["--cache"] if cache else [])]
    os.execve(binary, args, clean_env())


@main.group()
def runtime() -> None:
    """Prebuilt llama-server builds from llama.cpp's releases, kept in llamagate's cache.

    These work on the cache directly (no server needed); a running server uses the current
    build from its next model load on.
    """


def _download_progress(name: str, done: int, total: int) -> None:
    click.echo(f"\rdownloading {name}  {done / 1e6:.1f}/{total / 1e6:.1f} MB  {100 * done // max(total, 1)}%",
               nl=done >= total, err=True)


@runtime.command("install")
@click.option("--backend", type=click.Choice(BACKENDS), help="GPU backend (default: detected).")
@click.option("--version", "version", metavar="bNNNN|latest",
              help=f"llama.cpp build tag, or latest (default: the tested {DEFAULT_TAG}).")
def runtime_install(backend: str | None, version: str | None) -> None:
    """Download the llama.cpp build for this machine, verify it, and make it current."""
    from supervisor.runtime.install import install

    config = _settings()
    try:
        build = install(config.runtime_dir, config.releases_url, backend, version, _download_progress)
    except LlamagateError as e:
        _fail(e.message)
    click.echo(f"{build.name} ({build.backend}, {build.version}) is current")


@runtime.command("list")
def runtime_list() -> None:
    """List the downloaded builds; * marks the current one."""
    from supervisor.runtime.install import builds, current_name

    config = _settings()
    current = current_name(config.runtime_dir)
    rows = [["", "BUILD", "BACKEND", "VERSION", "INSTALLED"]]
    for b in builds(config.runtime_dir):
        installed = human_since(datetime.fromisoformat(b.installed_at))
        rows.append(["*" if b.name == current else "", b.name, b.backend, b.version, installed])
    table(rows)


@runtime.command("use")
@click.argument("build")
def runtime_use(build: str) -> None:
    """Make BUILD (a name from `runtime list`, or its tag) the current build."""
    from supervisor.runtime.install import use

    config = _settings()
    try:
        chosen = use(config.runtime_dir, build)
    except LlamagateError as e:
        _fail(e.message)
    click.echo(f"{chosen.name} ({chosen.backend}, {chosen.version}) is current")
