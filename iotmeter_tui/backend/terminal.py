"""What may reach an operator's terminal from a device: `safe_text`, the one filter the CLI's
output and the dashboard's cells go through (issue 15 item 11).

A device chooses the text of its command acknowledgements and OTA errors. Written raw, an
escape sequence in it can rewrite the screen, retitle the window, or with some terminals echo
input back. The collector refuses such strings at intake (protocol.py), but what was stored
before, or reached a store another way, is filtered here too.
"""

from __future__ import annotations

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
