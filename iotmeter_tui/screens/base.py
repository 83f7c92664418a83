"""`DashboardScreen`: what every view shares. The status line on top, the notice line and the
`:` / `/` prompt at the bottom over the footer of keys; a refresh once a second (only while
the screen is shown) that reads the stores in the app's I/O threads; store errors caught into
the notice line.

A view's state (filter, sort, selection) lives in reactive attributes whose watchers call
`state_changed()`: the status line's title is redrawn and the data read again, once per
change, whichever key or prompt made it. Reads run in one exclusive worker per screen, so a
read for a new state cancels the one in flight and the latest answer is the one shown."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from textual import work
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer
from textual.worker import Worker

from iotmeter_tui.view import jump
from iotmeter_tui.view.format import one_line
from iotmeter_tui.view.health import StatusSnapshot
from iotmeter_tui.widgets.prompt_bar import PromptBar
from iotmeter_tui.widgets.status_bar import NoticeLine, StatusBar

if TYPE_CHECKING:
    from iotmeter_tui.app import IotmeterApp
    from iotmeter_tui.export import ExportTable

T = TypeVar("T")



class DashboardScreen(Screen[None]):
    """Subclasses set VIEW, compose `compose_body()` and read their data in `load()`."""

    VIEW: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0  # completed loads: tests and the bench wait on it
        self._errors: dict[str, str] = {}
        self._again = False  # a refresh came while a read was in flight: read again after it
        self._load_worker: Worker[None] | None = None

    @property
    def dash(self) -> IotmeterApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield StatusBar(self.VIEW)
        yield from self.compose_body()
        yield NoticeLine()
        yield PromptBar(jump.completions())
        yield Footer(compact=True, show_command_palette=False)

    def compose_body(self) -> ComposeResult:
        yield from ()

    # --- refresh -----------------------------------------------------------------------------

    def on_mount(self) -> None:
        self.set_interval(self.dash.refresh_s, self._tick)
        self.show_status(self.dash.status)
        self.reload()

    def on_screen_resume(self) -> None:
        self.show_status(self.dash.status)
        self.reload()

    def _tick(self) -> None:
        if self.is_current:
            self.reload()

    @property
    def _loading(self) -> bool:
        """A read is in flight (or queued to start)."""
        worker = self._load_worker
        return worker is not None and not worker.is_finished

    def reload(self, *, urgent: bool = False) -> None:
        """Read the data again: right after the read in flight (a refresh tick: a slow store
        must not have its reads cancelled one after another), or (urgent: the operator asked
        for other data) at once, cancelling the read in flight, whose answer nobody wants."""
        if self._loading and not urgent:
            self._again = True
            return
        self._load_worker = self._load_loop()

    def state_changed(self) -> None:
        """What the view shows changed (its reactive state's watchers call this): the new
        title in the status line now, the new data read at once."""
        if self.is_mounted:
            self.show_status(self.dash.status)
            self.reload(urgent=True)

    @work(exclusive=True, group="load")
    async def _load_loop(self) -> None:
        # Cancelled at an await (a newer read replaced it), it leaves before showing anything:
        # each load() applies its answer after its last await.
        await self.dash.stores_ready.wait()
        while True:
            self._again = False
            try:
                await self.load()
            except Exception as exc:
                self.report("load", exc)
            self.loads += 1
            self.dash.view_loaded()
            if not self._again:
                break

    async def load(self) -> None:
        """Read what the screen shows (override)."""

    async def export_table(self) -> ExportTable | None:
        """What `e` writes to CSV: the view's data (override); None: nothing to export."""
        return None

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.dash.run_io(fn, *args)

    # --- status and errors ---------------------------------------------------------------

    def report(self, source: str, error: BaseException | str | None) -> None:
        """Set (or with None clear) this screen's error from `source`."""
        if error is None:
            if self._errors.pop(source, None) is None:
                return
        else:
            self._errors[source] = one_line(str(error)) or type(error).__name__
        self._show_notices()

    def show_status(self, status: StatusSnapshot) -> None:
        if not self.is_mounted:
            return
        for bar in self.query(StatusBar):
            bar.show(status, self.view_title())
        self._show_notices()

    def view_title(self) -> str:
        return self.VIEW

    def notices(self) -> tuple[str, ...]:
        """The lines the notice line shows now."""
        found = self.query(NoticeLine)
        return found.first().lines if found else ()

    def _show_notices(self) -> None:
        status = self.dash.status
        lines = []
        if status.phase == "failed" or status.phase == "starting":
            lines.append(status.phase_detail)
        lines.extend(status.errors.values())
        lines.extend(f"{s.name}: {s.detail}" if not s.detail.startswith(s.name) else s.detail
                     for s in status.stores if not s.ok)
        lines.extend(self._errors.values())
        for notice in self.query(NoticeLine):
            notice.show_lines(lines)
            notice.set_class(status.phase == "starting" and len(lines) == 1, "-info")

    # --- prompt -----------------------------------------------------------------------------

    def action_prompt_jump(self) -> None:
        self.query_one(PromptBar).open(":")

    def action_filter(self) -> None:
        self.query_one(PromptBar).open("/", self.search_text())

    def search_text(self) -> str:
        """The screen's `/` filter (override with set_search to support filtering)."""
        return ""

    def set_search(self, text: str) -> None:
        """Filter by `text` ('' for none): set the reactive whose watcher calls
        state_changed()."""

    def on_prompt_bar_changed(self, event: PromptBar.Changed) -> None:
        if event.kind == "/":
            self.set_search(event.value.strip())

    def on_prompt_bar_submitted(self, event: PromptBar.Submitted) -> None:
        bar = self.query_one(PromptBar)
        if event.kind == "/":
            bar.close()
            self.focus_main()
            return
        problem = self.dash.jump(event.value)
        if problem:
            bar.hint(problem)
        else:
            bar.close()
            self.focus_main()

    def on_prompt_bar_cancelled(self, event: PromptBar.Cancelled) -> None:
        if event.kind == "/" and self.search_text():
            self.set_search("")
        self.focus_main()

    def focus_main(self) -> None:
        """Give the keyboard back to the screen's main widget (override)."""
        self.focus_next()
