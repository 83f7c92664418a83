"""What may reach an operator's terminal from a device: `safe_text`, the one filter the CLI's
output and the dashboard's cells go through.

A device chooses the text of its command acknowledgements and OTA errors. Written raw, an
escape sequence in it can rewrite the screen, retitle the window, or with some terminals echo
input back. The collector refuses such strings at intake (protocol.py), but what was stored
before, or reached a store another way, is filtered here too.
"""

from __future__ import annotations

import unicodedata
from typing import Final

# Long enough for any honest error message; the dashboard truncates to its column anyway.
MAX_SHOWN_CHARS: Final = 1024
REPLACEMENT: Final = "\ufffd"  # one cell wide, and says something was there


def safe_text(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """`value` as text a terminal shows as is: every control, format (bidi overrides) or
    separator character replaced by U+FFFD, at most `limit` characters."""
    text = value if type(value) is str else str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    if text.isprintable():  # nearly always: one pass at C speed
        return text
    return "".join(c if c.isprintable() else REPLACEMENT for c in text)


def escaped(data: bytes | str | object, limit: int | None = None) -> str:
    """Device text written so it can be read but never drives the terminal: invalid UTF-8 as
    \\xNN, each control, format or separator character as a visible escape (\\x1b, \\u202e).
    For raw messages and device-chosen names, where what was sent matters (`safe_text` only
    marks that something was there). At most `limit` characters, then "…"."""
    if isinstance(data, bytes):
        text = data.decode("utf-8", "backslashreplace")
    else:
        text = data if type(data) is str else str(data)
    cut = limit is not None and len(text) > limit
    if cut:
        text = text[:limit]
    if not text.isprintable():
        text = "".join(_escape(c) if unicodedata.category(c) in _ESCAPED else c for c in text)
    return text + "…" if cut else text


_ESCAPED: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape(c: str) -> str:
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
