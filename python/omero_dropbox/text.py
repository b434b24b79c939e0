"""Text from the DropBox made safe to show: one escaping function for every output boundary.

Lab users choose every file and directory name under ``DropBox/<user>/``, and importers echo
those names in their output.  A newline in a name must not forge a line in ``DropBox.log``, an
ESC must not drive the operator's terminal, and a right-to-left override must not make
``evil\u202egpj.exe`` read as ``evil.exe.jpg``.  :func:`printable` is the one rule; it is applied

* to every log line by :class:`EscapingFormatter`, which every handler the package installs uses;
* to every reason the journal stores (so ``status``, ``status --json``, the history and the
  status page read escaped text);
* to the ``status``/``retry``/``forget`` output and, before HTML escaping, to the status page.

Escaping rules (``printable``):

* C0 controls U+0000-U+001F (newline, tab, carriage return, ESC...), DEL U+007F and C1 controls
  U+0080-U+009F: ``\\xNN``;
* undecodable bytes, which ``os.fsdecode`` turns into the surrogates U+DC80-U+DCFF: ``\\xNN``,
  NN the original byte;
* format characters (Unicode category Cf: bidi controls U+202A-U+202E and U+2066-U+2069, the
  marks U+200E/U+200F/U+061C, zero-width characters U+200B-U+200D and U+2060, the BOM U+FEFF,
  the soft hyphen U+00AD, tag characters...), the line and paragraph separators U+2028/U+2029
  and any other lone surrogate: ``\\uNNNN`` (``\\UNNNNNNNN`` above U+FFFF);
* everything else, including the backslash itself and every printable non-ASCII letter,
  unchanged.  Hex digits are lower case.  The result has no character that the function
  would escape, so applying it twice changes nothing.
"""

from __future__ import annotations

import functools
import logging
import re
import traceback
import unicodedata
from collections.abc import Mapping
from types import TracebackType
from typing import Any

__all__ = ["EscapingFormatter", "escape_log_handlers", "printable", "printable_tree"]

# Candidates only: printable ASCII never needs a look-up.
_NOT_PLAIN_ASCII = re.compile(r"[^\x20-\x7e]")

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


@functools.lru_cache(maxsize=4096)
def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogate escape of one undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    if unicodedata.category(ch) in ("Cf", "Cs", "Zl", "Zp"):
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return ch


def printable(text: str) -> str:
    """``text`` with controls, undecodable bytes and disguising format characters escaped.

    See the module docstring for the exact rules.  Safe for any ``str``, including the
    surrogate-escaped names that ``os.fsdecode`` makes of non-UTF-8 bytes.
    """
    if text.isprintable():  # no Cc, Cf, Cs, Zl or Zp in it: nothing to escape
        return text
    return _NOT_PLAIN_ASCII.sub(lambda m: _escape_char(m.group()), text)


def printable_tree(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings...) with every string, keys included, escaped."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, Mapping):
        return {printable_tree(k): printable_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable_tree(v) for v in value]
    return value


class EscapingFormatter(logging.Formatter):
    """Formats a record with every character from the outside escaped by :func:`printable`.

    The message (arguments substituted) becomes one line.  A traceback keeps its lines, but each
    is escaped, and an exception's own text (which may quote a file name) is one escaped line,
    so no part of a record can start a line of its own.  ``inner`` is the formatter that lays
    the line out (default: this one with ``fmt``), so the handlers of ``omero.util`` can be
    wrapped as they are (:func:`escape_log_handlers`).
    """

    def __init__(self, fmt: str | None = None, *, inner: logging.Formatter | None = None) -> None:
        super().__init__(fmt)
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)  # other handlers still see the original
        safe.msg, safe.args = printable(record.getMessage()), None
        if record.exc_info:
            safe.exc_text = self.formatException(record.exc_info)
        elif record.exc_text:
            safe.exc_text = _escape_lines(record.exc_text)
        safe.exc_info = None
        if record.stack_info:
            safe.stack_info = _escape_lines(record.stack_info)
        if self.inner is not None:
            return self.inner.format(safe)
        return super().format(safe)

    def formatException(self, ei: _ExcInfo) -> str:
        exc_type, exc, tb = ei
        if exc_type is None or exc is None:
            return ""
        chunks = traceback.TracebackException(exc_type, exc, tb).format()
        return "".join(_escape_chunk(c) for c in chunks).rstrip("\n")


def _escape_lines(text: str) -> str:
    return "\n".join(printable(line) for line in text.split("\n"))


def _escape_chunk(chunk: str) -> str:
    """One piece of :meth:`traceback.TracebackException.format`, escaped.

    The traceback's own pieces (its header, the frames: our source files, and the chaining
    messages) keep their lines; any other piece is an exception's text and becomes one line.
    """
    if chunk.startswith(("Traceback (", "  ", "\n")):
        return _escape_lines(chunk)
    body = chunk[:-1] if chunk.endswith("\n") else chunk
    return printable(body) + "\n"


def escape_log_handlers(logger: logging.Logger | None = None) -> None:
    """Make every handler of ``logger`` (default: the root) format through :func:`printable`."""
    for handler in (logger or logging.getLogger()).handlers:
        current = handler.formatter
        if not isinstance(current, EscapingFormatter):
            handler.setFormatter(EscapingFormatter(inner=current or logging.Formatter()))
