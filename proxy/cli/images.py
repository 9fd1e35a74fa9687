"""Image paths typed into a prompt for a vision model, found and read as `ollama run` reads them:
each path that names a JPEG, PNG or WebP file becomes an image of the message and leaves its text."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import click

MAX_IMAGE = 100 * 1024 * 1024  # Ollama's limit per file

# A path starts with `/`, `./`, `\` or a drive letter and ends in an image extension; it may hold
# spaces (escaped or not), so candidates that name no file are left in the text.
_PATH = re.compile(r"(?:[a-zA-Z]:)?(?:\./|/|\\)[\S\\ ]+?\.(?i:jpg|jpeg|png|webp)\b")
# Shell escapes a terminal's drag and drop writes (`\ `, `\(`, `'\''`...), undone before opening.
_ESCAPE = re.compile(r"'\\''|\\([ ()\[\]{}$&;'\\*?~])")


class ImageError(ValueError):
    pass


def paths_in(text: str) -> list[str]:
    return _PATH.findall(text)


def _unescape(path: str) -> str:
    return _ESCAPE.sub(lambda m: m.group(1) or "'", path)


def _is_image(head: bytes) -> bool:
    return head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(12)
        if not _is_image(head):
            raise ImageError(f"invalid image type: {path} is not a JPEG, PNG or WebP file")
        if path.stat().st_size > MAX_IMAGE:
            raise ImageError("file size exceeds maximum limit (100MB)")
        return head + f.read()


def extract(text: str) -> tuple[str, list[str]]:
    """The prompt without the paths of the images it names, and those images in base64; each one
    added is announced on standard error ("Added image '…'")."""
    images = []
    for found in paths_in(text):
        path = _unescape(found)
        try:
            data = _read(Path(path))
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ImageError(f"{path}: {e.strerror}") from None
        click.echo(f"Added image '{path}'", err=True)
        for spelling in (f"'{path}'", f"'{found}'", found):
            text = text.replace(spelling, "")
        images.append(base64.b64encode(data).decode())
    return text.strip(), images
