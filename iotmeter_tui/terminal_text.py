"""Text for a terminal from what devices (or anyone) sent: every byte is hostile, so control
characters (C0, C1, DEL) and invisible format characters (bidi overrides, zero-width) are shown
escaped instead of reaching the terminal, where they could move the cursor, recolour or
rewrite what an operator reads."""

from __future__ import annotations

import unicodedata


def printable(text: object) -> str:
    """`text` as str with each control or format character written as an escape (\\x1b,
    \\u202e); everything else unchanged."""
    value = str(text)
    if value.isprintable():  # the common case: nothing to do
        return value
    out = []
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
