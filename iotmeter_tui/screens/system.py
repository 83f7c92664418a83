"""System: is ingest keeping up, and can every store be reached? The collector's health
channel (counters, rates, messages in flight, spool, each sink's state and backlog), how fresh
the newest message in the registry is, and each store's connectivity with its URL."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Label, Sparkline, Static

from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.backend.redaction import redact
from iotmeter_tui.screens.base import DashboardScreen
from iotmeter_tui.view.format import ago, count, one_line, rate, size
from iotmeter_tui.widgets.live_table import Column, LiveTable, Row

if TYPE_CHECKING:
    from iotmeter_tui.backend.collector.health import CollectorHealth
    from iotmeter_tui.backend.stores import Stores
    from iotmeter_tui.view.health import StatusSnapshot

SINK_COLUMNS = (
    Column("name", "SINK", 12),
    Column("up", "STATE", 7),
    Column("backlog", "BACKLOG", 10, align="right"),
    Column("error", "LAST ERROR", 20, flex=True),
)
STORE_COLUMNS = (
    Column("name", "STORE", 11),
    Column("ok", "STATE", 7),
    Column("url", "URL", 24, flex=True, priority=1),
    Column("detail", "DETAIL", 24, flex=True),
)
STALE_HEALTH_S = 5.0  # the child sends health every second; older means it is stuck


def newest_message(stores: Stores) -> int | None:
    newest = stores.metadata.list_devices(order_by="last_seen", descending=True, limit=1)
    return newest[0].last_seen if newest else None


def collector_text(status: StatusSnapshot, ack_rate: float | None, newest_ms: int | None,
                   now_ms: int) -> str:
    health = status.health
    look = {"up": "$text-success", "starting": "$text-warning"}.get(status.collector,
                                                                  "$text-error")
    if status.collector == "none":
        return " [$text-muted]collector: not run by this dashboard (see the headless " \
               "collector's /metrics)[/]"
    lines = [f" [b]collector[/b]   [{look}]● {status.collector}[/]"]
    if health is None:
        lines.append(" no health report yet")
        return "\n".join(lines)
    age = max(0.0, status.at - health.at)
    broker = "broker connected" if health.broker_connected else \
        f"[$text-error]broker: {one_line(health.broker_error or 'not connected', 60)}[/]"
    stale = f"  [$text-error]health {age:.0f}s old[/]" if age > STALE_HEALTH_S else ""
    lines[0] += f"  {broker}{stale}"
    lines.append(f" received  {count(health.received):>13} {rate(status.rate):>9}    "
                 f"acked {count(health.acked):>13} {rate(ack_rate):>9}")
    spool_full = " [$text-error]FULL[/]" if health.spool_full else ""
    lines.append(f" in flight {count(health.in_flight):>13}              "
                 f"dupes {count(health.duplicates):>13}")
    lines.append(f" spool     {size(health.spool_bytes):>13}{spool_full}              "
                 f"newest message {ago(newest_ms, now_ms)} ago")
    dispatcher = health.dispatcher
    if dispatcher is not None:
        # Commands and OTA offers go out through the collector's dispatcher.
        error = dispatcher.error
        state = f"[$text-error]{one_line(error, 60)}[/]" if error else "ok"
        endpoint = dispatcher.firmware_endpoint or "—"
        lines.append(f" dispatch  {count(dispatcher.passes):>13} passes  {state}  "
                     f"firmware {endpoint}")
    return "\n".join(lines)


def sink_rows(health: CollectorHealth | None) -> list[Row]:
    sinks = health.sinks if health is not None else ()
    return [
        Row(sink.name, (sink.name, ("up", "ok") if sink.up else ("down", "error"),
                        size(sink.backlog_bytes),
                        (one_line(sink.error) or "—", "error" if sink.error else "muted")))
        for sink in sorted(sinks, key=lambda sink: sink.name)
    ]


def store_rows(status: StatusSnapshot, urls: dict[str, str]) -> list[Row]:
    return [
        Row(light.name, (light.name, ("ok", "ok") if light.ok else ("down", "error"),
                         urls.get(light.name, ""),
                         (light.detail, "" if light.ok else "error")))
        for light in status.stores
    ]


class SystemScreen(DashboardScreen):
    VIEW = "System"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "refresh_now", "refresh", id="system.refresh_now"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.newest_ms: int | None = None

    def compose_body(self) -> ComposeResult:
        yield Static("", id="collector-health")
        yield Sparkline([], id="rate-sparkline")
        yield Label(" sinks", classes="section")
        yield LiveTable(SINK_COLUMNS, id="sinks-table", empty_text="no sink reports yet")
        yield Label(" stores", classes="section")
        yield LiveTable(STORE_COLUMNS, id="stores-table", empty_text="checking…")

    def focus_main(self) -> None:
        self.query_one("#stores-table", LiveTable).focus()

    def on_mount(self) -> None:
        super().on_mount()
        self.focus_main()

    async def load(self) -> None:
        try:
            self.newest_ms = await self.io(newest_message, self.dash.runtime.stores)
            self.report("metadata", None)
        except StoreError as exc:
            self.report("metadata", exc)
        self._render_health()

    def show_status(self, status: StatusSnapshot) -> None:
        super().show_status(status)
        if self.is_mounted:
            self._render_health()

    def _render_health(self) -> None:
        dash = self.dash
        status = dash.status
        self.query_one("#collector-health", Static).update(
            collector_text(status, dash.health_tracker.ack_rate(), self.newest_ms,
                           dash.now_ms()))
        self.query_one("#rate-sparkline", Sparkline).data = list(dash.health_tracker.history)
        self.query_one("#sinks-table", LiveTable).set_rows(sink_rows(status.health))
        try:
            stores = dash.runtime.stores
            urls = dict(zip(("metadata", "timeseries", "archive"),
                            (redact(u) for u in stores.urls), strict=False))
        except Exception:
            urls = {}
        self.query_one("#stores-table", LiveTable).set_rows(store_rows(status, urls))

    def action_refresh_now(self) -> None:
        self.dash.refresh_stores()
        self.reload()
