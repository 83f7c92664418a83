"""What may reach an operator's terminal from a device: the two filters of backend/terminal.py."""

from __future__ import annotations

from iotmeter_tui.backend.terminal import REPLACEMENT, escaped, safe_text


def test_safe_text_replaces_what_could_drive_a_terminal() -> None:
    assert safe_text("ok 1.2.3") == "ok 1.2.3"
    assert safe_text("a\x1b[2Jb\u202ec\x9b") == f"a{REPLACEMENT}[2Jb{REPLACEMENT}c{REPLACEMENT}"
    assert safe_text("x" * 50, limit=10) == "x" * 9 + "…"


def test_escaped_shows_what_was_sent_without_sending_it_on() -> None:
    # Raw messages and device-chosen names: the operator debugging firmware sees the bytes.
    assert escaped(b'{"v":2}') == '{"v":2}'
    assert escaped(b"a\x1b[31mred\x07\xff") == "a\\x1b[31mred\\x07\\xff"
    assert escaped("bidi\u202eoverride\u2028") == "bidi\\u202eoverride\\u2028"
    assert escaped("line\nbreak") == "line\\x0abreak"
    assert escaped("abcdef", 3) == "abc…"
    assert all(c.isprintable() for c in escaped(bytes(range(256))))
