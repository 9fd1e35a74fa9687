"""`ollama run`'s word wrap: an answer streamed to a terminal breaks its lines before the word
that would come within five columns of the right edge, moving that word (already printed) down
to the next line."""

from __future__ import annotations

import os
import sys
import unicodedata


def char_width(ch: str) -> int:
    """Columns a character takes on a terminal: 2 for East Asian wide ones, 0 for combining marks
    and controls."""
    if unicodedata.combining(ch) or not ch.isprintable():
        return 0
    return 2 if unicodedata.east_asian_width(ch) in "WF" else 1


def stdout_width() -> int:
    """The terminal's width, 0 where standard output is no terminal (then nothing is wrapped)."""
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        return 0


class WordWrap:
    """The column and the word being written, across the pieces of one stream."""

    def __init__(self) -> None:
        self.column = 0
        self.word = ""

    def feed(self, text: str, width: int) -> str:
        """`text` as it is to be written on a terminal `width` columns wide (unchanged under 10,
        as Ollama's)."""
        if width < 10:
            return text
        out = []
        for ch in text:
            if self.column + 1 > width - 5:
                word_width = sum(map(char_width, self.word))
                if word_width > width - 10:
                    # A word longer than a line can't move down: it breaks at the margin.
                    out.append("\n")
                    self.column, self.word = 0, ""
                else:
                    # Back over the word, clear it, and write it again on the next line.
                    out.append((f"\x1b[{word_width}D" if word_width else "") + "\x1b[K\n" + self.word)
                    self.column = word_width
            out.append(ch)
            self._advance(ch)
        return "".join(out)

    def _advance(self, ch: str) -> None:
        width = char_width(ch)
        self.column += width
        if ch in "\n\r":
            self.column, self.word = 0, ""
        elif width >= 2 or ch in " \t":  # a line may break after a space or beside a wide character
            self.word = ""
        else:
            self.word += ch
