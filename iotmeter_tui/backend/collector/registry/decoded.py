"""A registry record's message content, parsed at most once per record."""

from __future__ import annotations

from typing import Any, NamedTuple

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.collector.spool import SpoolRecord


class Content(NamedTuple):
    data: dict[str, Any]
    # A status's boot, when it carries one (protocol.decode drops it: a status takes no part
    # in dedup). Only a Last Will needs it, to tell a stale one from the current boot's.
    status_boot: int | None = None


def content(record: SpoolRecord) -> Content:
    """The pipeline's parsed `data` when the record came from the spool's in-memory tail;
    otherwise the payload, parsed once. An offline status is parsed once for its boot too."""
    if record.msg_type == protocol.STATUS:
        if record.data is not None and record.data.get("state") != "offline":
            return Content(record.data)
        message = protocol.loads(record.payload)
        boot = message.get("boot")
        return Content(message["data"], boot if type(boot) is int else None)
    if record.data is not None:
        return Content(record.data)
    return Content(protocol.loads(record.payload)["data"])
