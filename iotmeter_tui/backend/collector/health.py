"""The collector's health as values: what the dashboard's status line and system screen show,
read from the collector's own counters and state (never from its Prometheus samples, which are
for scrapers). The dashboard's collector runs in a child process, so these travel over a pipe:
small frozen dataclasses of plain values, which pickle as they are."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SinkHealth:
    """One sink (timeseries, archive, registry): whether its last write succeeded, why not,
    and the spool bytes it has not taken yet."""

    name: str
    up: bool
    error: str | None
    backlog_bytes: int


@dataclass(frozen=True, slots=True)
class DispatcherHealth:
    """The collector's server -> device side: commands and OTA offers."""

    passes: int  # passes over commands and campaigns completed since the start
    error: str | None  # the last pass's failure, or the firmware endpoint's
    broker_connected: bool  # its publisher's own connection
    firmware_endpoint: str | None  # the URL offers carry, None while not serving


@dataclass(frozen=True, slots=True)
class CollectorHealth:
    """One snapshot. The counters are cumulative since the collector started: rates are the
    reader's business (view/health.py's HealthTracker)."""

    at: float  # seconds since the epoch, when the snapshot was taken
    starting: bool  # still preparing stores and state; not taking messages yet
    broker_connected: bool
    broker_error: str | None
    received: int  # messages taken from the broker
    acked: int  # messages acknowledged to the broker once durable in the spool
    duplicates: int
    spool_bytes: int
    spool_full: bool  # acknowledgements are held until the sinks free space
    sinks: tuple[SinkHealth, ...] = ()
    dispatcher: DispatcherHealth | None = None

    @property
    def in_flight(self) -> int:
        """Received but not acknowledged yet."""
        return max(0, self.received - self.acked)


def combined(parts: list[CollectorHealth], at: float) -> CollectorHealth:
    """The health of a command's worker processes as one collector: counters summed, a sink
    up only where it is up in every worker, the leading worker's (the first's) dispatcher."""
    sinks: dict[str, SinkHealth] = {}
    for part in parts:
        for sink in part.sinks:
            seen = sinks.get(sink.name)
            sinks[sink.name] = sink if seen is None else SinkHealth(
                sink.name, seen.up and sink.up, seen.error or sink.error,
                seen.backlog_bytes + sink.backlog_bytes)
    return CollectorHealth(
        at=at,
        starting=not parts or any(p.starting for p in parts),
        broker_connected=bool(parts) and all(p.broker_connected for p in parts),
        broker_error=next((p.broker_error for p in parts if p.broker_error), None),
        received=sum(p.received for p in parts),
        acked=sum(p.acked for p in parts),
        duplicates=sum(p.duplicates for p in parts),
        spool_bytes=sum(p.spool_bytes for p in parts),
        spool_full=any(p.spool_full for p in parts),
        sinks=tuple(sinks.values()),
        dispatcher=parts[0].dispatcher if parts else None,
    )
