"""One redaction for everything shown to a person: passwords with '@', ':'
and '/' unencoded, in URLs alone, inside messages and in JSON log lines."""

from __future__ import annotations

import io
import json
import logging

import pytest

from iotmeter_tui.backend import logjson
from iotmeter_tui.backend.redaction import redact
from iotmeter_tui.backend.stores import Stores

PASSWORD = "p@ss:w/rd"


@pytest.mark.parametrize(("url", "shown"), [
    (f"mqtt://collector:{PASSWORD}@broker:1883", "mqtt://collector:***@broker:1883"),
    (f"postgresql://iot:{PASSWORD}@db:5432/iot", "postgresql://iot:***@db:5432/iot"),
    ("influxdbs://u:%40%3A%2F@influx:8086/x", "influxdbs://u:***@influx:8086/x"),
    ("mqtt://broker:1883", "mqtt://broker:1883"),
    ("mqtt://user@broker:1883", "mqtt://user@broker:1883"),  # no password to hide
    ("file:///srv/a@b/archive", "file:///srv/a@b/archive"),
    ("sqlite:////home/op/iotmeter.db", "sqlite:////home/op/iotmeter.db"),
])
def test_a_url_loses_its_password_and_nothing_else(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_urls_inside_a_message_are_redacted() -> None:
    text = (f"cannot reach 'mqtt://a:{PASSWORD}@h:1' nor postgresql://b:{PASSWORD}@db/x "
            "(connection refused)")
    assert redact(text) == ("cannot reach 'mqtt://a:***@h:1' nor postgresql://b:***@db/x "
                            "(connection refused)")


def test_a_log_line_never_carries_a_password() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logjson.JsonFormatter())
    logger = logging.getLogger("iotmeter.test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("store down: %s", f"postgresql://iot:{PASSWORD}@db/x",
                       extra={"event": "x", "url": f"mqtt://c:{PASSWORD}@broker:1883"})
    finally:
        logger.removeHandler(handler)
    line = out.getvalue()
    assert "p@ss" not in line and "w/rd" not in line
    entry = json.loads(line)
    assert entry["url"] == "mqtt://c:***@broker:1883"
    assert entry["msg"] == "store down: postgresql://iot:***@db/x"


def test_a_quote_in_a_password_does_not_end_it() -> None:
    # JSON escapes it as \", a repr may quote around it: neither may let the rest show.
    assert redact('{"url": "mqtt://c:a\\"b@c@h:1"}') == '{"url": "mqtt://c:***@h:1"}'
    assert redact("mqtt://c:it's@h:1") == "mqtt://c:***@h:1"


def test_describe_shows_no_password() -> None:
    stores = Stores(None, None, None, (  # type: ignore[arg-type]
        f"postgresql://iot:{PASSWORD}@db:5432/iot", "influxdb://influx:8086/m", "s3://bucket"))
    assert stores.describe() == ("postgresql://iot:***@db:5432/iot, influxdb://influx:8086/m, "
                                 "s3://bucket")
