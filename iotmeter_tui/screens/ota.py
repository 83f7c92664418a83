"""OTA: firmware campaigns, newest first, each with its overall progress; below, the targets
of the highlighted campaign, one progress bar each. `u` uploads a firmware image and starts a
campaign, `x` aborts the highlighted one (through the runtime's `ControlServices.ota`); tab
moves between the two lists."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.reactive import reactive

from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.backend.stores.metadata import TARGET_FINAL_STATES
from iotmeter_tui.screens.base import DashboardScreen
from iotmeter_tui.screens.dialog import Field, FormDialog, parse_ids, parse_number
from iotmeter_tui.view.format import ago, one_line, role_of, stamp
from iotmeter_tui.widgets.live_table import Bar, Column, LiveTable, Row

if TYPE_CHECKING:
    from iotmeter_tui.backend.stores import Stores
    from iotmeter_tui.backend.stores.metadata import Campaign, OtaTarget

UNAVAILABLE = "OTA service unavailable"
CAMPAIGN_LIMIT = 50

CAMPAIGN_COLUMNS = (
    Column("id", "CAMPAIGN", 17),
    Column("fw_version", "VERSION", 9),
    Column("selector", "TARGETS", 12, priority=3),
    Column("state", "STATE", 10),
    Column("done", "DONE", 9, align="right"),
    Column("progress", "PROGRESS", 16, flex=True, priority=1),
    Column("created_at", "CREATED", 14, priority=2),
)
TARGET_COLUMNS = (
    Column("device_id", "DEVICE", 12),
    Column("state", "STATE", 11),
    Column("progress", "PROGRESS", 20, flex=True),
    Column("attempts", "TRY", 3, align="right", priority=3),
    Column("updated_at", "AGE", 4, align="right", priority=2),
    Column("error", "ERROR", 14, flex=True, priority=1),
)


@dataclass(slots=True)
class OtaData:
    campaigns: list[Campaign]
    tallies: dict[str, dict[str, int]]  # campaign -> target state -> targets
    targets: list[OtaTarget]
    selected: str | None = None  # the campaign whose targets these are
    error: str | None = None


def read_ota(stores: Stores, selected: str | None) -> OtaData:
    """The campaigns with their targets counted by state in the store, and the targets of
    `selected` (None: the newest campaign) when it is one of those listed."""
    md = stores.metadata
    try:
        campaigns = md.list_campaigns(limit=CAMPAIGN_LIMIT)
        if selected is None and campaigns:
            selected = campaigns[0].id
        tallies = md.ota_target_counts([c.id for c in campaigns])
        listed = any(c.id == selected for c in campaigns)
        targets = md.list_targets(selected) if selected is not None and listed else []
        return OtaData(campaigns, tallies, targets, selected)
    except StoreError as exc:
        return OtaData([], {}, [], selected, str(exc))


def campaign_row(campaign: Campaign, tally: Mapping[str, int]) -> Row:
    total = sum(tally.values())
    done = tally.get("done", 0)
    failed = tally.get("failed", 0) + tally.get("timed_out", 0)  # skipped is no failure
    finished = sum(tally.get(s, 0) for s in TARGET_FINAL_STATES)
    pct = 100.0 * finished / total if total else 0.0
    role = "error" if failed else ("ok" if total and done == total else "accent")
    return Row(
        campaign.id,
        (
            campaign.id,
            campaign.fw_version,
            campaign.selector,
            (campaign.state, role_of(campaign.state)),
            f"{done}/{total}" + (f" ✖{failed}" if failed else ""),
            Bar(pct, role),
            stamp(campaign.created_at),
        ),
    )


def target_row(target: OtaTarget, now_ms: int) -> Row:
    pct = target.progress_pct
    if target.state == "done":
        pct = 100.0
    role = {"ok": "ok", "error": "error"}.get(role_of(target.state), "accent")
    return Row(
        target.device_id,
        (
            target.device_id,
            (target.state, role_of(target.state)),
            Bar(pct if pct is not None else 0.0, role),
            str(target.attempts),
            ago(target.updated_at, now_ms),
            (target.error or "", "error"),
        ),
    )


@dataclass(frozen=True, slots=True)
class CampaignRequest:
    path: Path | None
    version: str
    device_ids: list[str] | None
    device_type: str | None
    all_devices: bool
    batch_size: int
    max_failures_pct: float


TARGET_CHOICES = (
    ("all devices", "all"),
    ("DC meters", "power_meter_dc"),
    ("AC meters", "power_meter_ac"),
    ("the devices listed", "ids"),
)


def parse_campaign(values: dict[str, str]) -> CampaignRequest:
    version = values["version"].strip()
    if not version:
        raise ValueError("version: required (e.g. 1.3.0)")
    path_text = values["path"].strip()
    path = Path(path_text).expanduser() if path_text else None
    if path is not None and not path.is_file():
        raise ValueError(f"firmware file: {path} is not a readable file")
    target = values["target"]
    ids = parse_ids(values["devices"])
    if target == "ids" and not ids:
        raise ValueError("devices: list the device ids, or choose another target")
    return CampaignRequest(
        path=path,
        version=version,
        device_ids=ids if target == "ids" else None,
        device_type=target if target.startswith("power_meter_") else None,
        all_devices=target == "all",
        batch_size=parse_number(values["batch"], "batch size", kind=int, minimum=1),
        max_failures_pct=parse_number(values["max_failures"], "max failures %", minimum=0,
                                      maximum=100),
    )


def campaign_dialog(selection: list[str]) -> FormDialog[CampaignRequest]:
    return FormDialog(
        "Upload firmware and start a campaign",
        [
            Field("path", "firmware file", placeholder="/path/to/image.bin (empty: uploaded)"),
            Field("version", "version", placeholder="1.3.0"),
            Field("target", "targets", "ids" if selection else "all", choices=TARGET_CHOICES),
            Field("devices", "devices", " ".join(selection), placeholder="dc-0001 ac-0002"),
            Field("batch", "batch size", "10"),
            Field("max_failures", "max failures %", "20"),
        ],
        parse_campaign,
        submit_label="Start",
        note="An empty file path starts a campaign for a version uploaded before.",
    )


def start_campaign(ota: Any, request: CampaignRequest) -> Any:
    """Upload (when a file is given), then start; runs in an I/O thread."""
    if request.path is not None:
        # `iotmeter ota sign` writes IMAGE.sig beside the image; the dashboard takes it from
        # there (with IOTMETER_FIRMWARE_PUBLIC_KEY set, an image without one is refused).
        signature = request.path.with_name(request.path.name + ".sig")
        if signature.is_file():
            ota.upload(request.path, request.version, signature)
        else:
            ota.upload(request.path, request.version)
    return ota.start_campaign(
        request.version,
        device_ids=request.device_ids,
        device_type=request.device_type,
        all_devices=request.all_devices,
        batch_size=request.batch_size,
        max_failures_pct=request.max_failures_pct,
    )


class OtaScreen(DashboardScreen):
    VIEW = "OTA"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("u", "upload", "upload+start", id="ota.upload"),
        Binding("x", "abort", "abort", id="ota.abort"),
        Binding("tab", "switch", "campaigns/targets", show=False, id="ota.switch"),
    ]

    # The highlighted campaign, whose targets the lower list shows (None: the newest).
    selected: reactive[str | None] = reactive(None, repaint=False, init=False)

    def __init__(self) -> None:
        super().__init__()
        self.campaigns: dict[str, Campaign] = {}
        self._targets_of: str | None = None  # the campaign whose targets are on screen

    def compose_body(self) -> ComposeResult:
        yield LiveTable(CAMPAIGN_COLUMNS, id="campaigns-table",
                        empty_text="no campaigns yet: press u to upload firmware and start one")
        yield LiveTable(TARGET_COLUMNS, id="targets-table", empty_text="no targets")

    def focus_main(self) -> None:
        self.query_one("#campaigns-table", LiveTable).focus()

    def on_mount(self) -> None:
        super().on_mount()
        self.focus_main()

    def view_title(self) -> str:
        return f"OTA · {self.selected}" if self.selected else "OTA"

    async def load(self) -> None:
        selected = self.selected
        data = await self.io(read_ota, self.dash.runtime.stores, selected)
        if selected != self.selected:
            return  # no longer wanted: the read for the new selection is under way
        self.report("metadata", data.error)
        if data.error:
            return
        self.report("service", None if self.dash.control_offered else
                    f"{UNAVAILABLE}: campaigns are shown, starting one is off")
        self.campaigns = {c.id: c for c in data.campaigns}
        self._targets_of = data.selected
        self.selected = data.selected  # the first read picks the newest campaign
        self.query_one("#campaigns-table", LiveTable).set_rows(
            campaign_row(c, data.tallies.get(c.id, {})) for c in data.campaigns)
        now_ms = self.dash.now_ms()
        self.query_one("#targets-table", LiveTable).set_rows(
            target_row(t, now_ms) for t in data.targets)

    def on_live_table_highlighted(self, event: LiveTable.Highlighted) -> None:
        if event.table.id == "campaigns-table" and event.row is not None:
            self.selected = event.row.key

    def watch_selected(self, selected: str | None) -> None:
        if selected == self._targets_of:
            self.show_status(self.dash.status)  # its targets are on screen: the title only
        else:
            self.state_changed()

    def action_switch(self) -> None:
        campaigns = self.query_one("#campaigns-table", LiveTable)
        targets = self.query_one("#targets-table", LiveTable)
        (campaigns if targets.has_focus else targets).focus()

    def action_upload(self) -> None:
        if not self.dash.control_offered:
            self.notify(UNAVAILABLE, severity="error")
            return

        def chosen(request: CampaignRequest | None) -> None:
            if request is not None:
                self.run_worker(self._start(request))

        self.app.push_screen(campaign_dialog(list(self.dash.device_selection)), chosen)

    async def action_abort(self) -> None:
        """Abort the highlighted campaign: no new offers; meters mid-update finish."""
        campaign_id = self.selected
        if campaign_id is None:
            return
        if not self.dash.control_offered:
            self.notify(UNAVAILABLE, severity="error")
            return
        try:
            ota = (await self.dash.control()).ota
            await self.io(ota.abort, campaign_id)
        except Exception as exc:  # the service's refusal, in one line
            self.notify(f"not aborted: {one_line(str(exc), 120)}", severity="error")
            return
        self.notify(f"campaign {campaign_id} aborting", timeout=3)
        self.reload()

    async def _start(self, request: CampaignRequest) -> None:
        try:
            ota = (await self.dash.control()).ota
            campaign = await self.io(start_campaign, ota, request)
        except Exception as exc:
            self.notify(f"campaign not started: {one_line(str(exc), 120)}", severity="error")
            return
        campaign_id = getattr(campaign, "id", None)
        self.notify(f"campaign {campaign_id or ''} started: {request.version}", timeout=3)
        if campaign_id and campaign_id != self.selected:
            self.selected = campaign_id  # its watcher reads it
        else:
            self.reload()
