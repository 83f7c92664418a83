"""The Dispatcher: the collector's server -> device side, one thread.

Every half second it (a) delivers queued commands to devices the registry says are online,
publishes again those left unanswered, and times out the expired ones (`CommandService.
dispatch`); (b) advances the open OTA campaigns (`RolloutDriver.advance`). It keeps no state
of its own worth saving — everything is in the metadata store — so a restarted collector
carries on where the last one stopped. A failing broker or store never kills the thread: it
logs once, backs off, and tries again.

With several collectors sharing the load, each runs a dispatcher. That is safe (devices act
once per command_id and campaign_id; final states never change) but does the work twice.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final
from urllib.parse import urlsplit

from iotmeter_tui.backend.collector.health import DispatcherHealth
from iotmeter_tui.backend.config import Settings
from iotmeter_tui.backend.control.commands import CommandService
from iotmeter_tui.backend.control.firmware import FirmwareServer, firmware_links
from iotmeter_tui.backend.control.ota import RolloutDriver
from iotmeter_tui.backend.control.publisher import PublishError, ServerPublisher
from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.backend.stores import Stores

log = logging.getLogger(__name__)

INTERVAL_S: Final = 0.5
MAX_BACKOFF_S: Final = 5.0
FIRMWARE_RETRY_S: Final = 5.0
# A device fetches its image as soon as the offer arrives. On a clean stop the endpoint stays
# up this long after the last offer, so a restart does not fail the downloads it just asked
# for (a crash still does: those targets fail and can be offered again in a new campaign).
OFFER_DRAIN_S: Final = 3.0
STOP_BUDGET_S: Final = 4.0  # of the collector's 8 s between SIGTERM and exit


class Dispatcher:
    def __init__(self, commands: CommandService, rollout: RolloutDriver | None, *,
                 publisher: ServerPublisher | None = None,
                 firmware_server: FirmwareServer | None = None,
                 interval_s: float = INTERVAL_S,
                 firmware_retry_s: float = FIRMWARE_RETRY_S) -> None:
        self.commands = commands
        self.rollout = rollout
        self.publisher = publisher
        self.firmware_server = firmware_server
        self.interval_s = interval_s
        self.firmware_retry_s = firmware_retry_s
        self.passes = 0
        self.last_error: str | None = None
        self.firmware_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_firmware_try = 0.0

    @classmethod
    def for_collector(cls, settings: Settings, mqtt_url: str, stores: Stores) -> Dispatcher:
        """The collector's dispatcher: its own clean MQTT session `{client_id}-dispatch`, and
        the firmware endpoint when offers point at it."""
        # Its own broker user when configured: where the broker makes the user the client id,
        # sharing the collector's user would make each connection take the other's place.
        dispatch_url = settings.mqtt_dispatch_url or mqtt_url
        if settings.mqtt_dispatch_url is None and urlsplit(settings.mqtt_url or "").username:
            log.warning("the dispatcher shares the collector's broker user; a broker that ties "
                        "client ids to users needs IOTMETER_MQTT_DISPATCH_URL", extra={
                            "event": "dispatch_shares_identity"})
        publisher = ServerPublisher(dispatch_url, f"{settings.client_id}-dispatch")
        links, server = firmware_links(settings, stores.metadata, stores.archive)
        commands = CommandService(stores.metadata, publisher,
                                  redeliver_after_s=settings.redeliver_after_s)
        rollout = RolloutDriver(stores.metadata, publisher, links,
                                redeliver_after_s=settings.redeliver_after_s)
        return cls(commands, rollout, publisher=publisher, firmware_server=server)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self.publisher is not None:
            self.publisher.start()
        self._start_firmware_server()
        self._thread = threading.Thread(target=self._run, name="iotmeter-dispatch", daemon=True)
        self._thread.start()

    def stop(self, budget_s: float = STOP_BUDGET_S) -> None:
        """Within `budget_s`: finish the pass under way, keep the firmware endpoint up until
        OFFER_DRAIN_S after the last offer and for downloads under way, then disconnect."""
        deadline = time.monotonic() + budget_s
        self._stop.set()
        if self._thread is not None:
            self._thread.join(min(1.0, budget_s))  # a pass stuck on a store: not waited for
        if self.firmware_server is not None:
            if self.rollout is not None and self.firmware_server.serving:
                since = time.monotonic() - self.rollout.last_offer_monotonic
                linger = min(OFFER_DRAIN_S - since, deadline - time.monotonic() - 0.5)
                time.sleep(max(0.0, linger))
            self.firmware_server.stop(drain_s=max(0.1, deadline - time.monotonic()))
        if self.publisher is not None:
            self.publisher.close()

    def health(self) -> DispatcherHealth:
        return DispatcherHealth(
            passes=self.passes,
            error=self.last_error or self.firmware_error,
            broker_connected=bool(self.publisher and self.publisher.connected),
            firmware_endpoint=(self.firmware_server.advertised_url
                               if self.firmware_server and self.firmware_server.serving
                               else None),
        )

    # --- the loop ---------------------------------------------------------------------------

    def run_once(self) -> None:
        """One pass: commands, then campaigns. Raises what the stores or the broker raise."""
        self.commands.dispatch()
        if self.rollout is None:
            return
        offering = True
        if self.firmware_server is not None and not self.firmware_server.serving:
            # Offers would name an endpoint that is not there: they wait for it, while
            # timeouts and versions reported are still followed.
            self._start_firmware_server()
            offering = self.firmware_server.serving
        self.rollout.advance(offering=offering)

    def _run(self) -> None:
        backoff = self.interval_s
        while not self._stop.is_set():
            try:
                self.run_once()
                self.passes += 1
                self._recovered()
                backoff = self.interval_s
            except (StoreError, PublishError) as exc:
                self._failed(str(exc), logging.WARNING)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except Exception as exc:  # a bug must not end command delivery: log it, go on
                self._failed(f"{type(exc).__name__}: {exc}", logging.ERROR, exc_info=True)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            self._stop.wait(backoff)

    def _start_firmware_server(self) -> None:
        server = self.firmware_server
        if server is None or server.serving or time.monotonic() < self._next_firmware_try:
            return
        try:
            server.start()
        except OSError as exc:
            self._next_firmware_try = time.monotonic() + self.firmware_retry_s
            message = (f"firmware endpoint cannot listen on {server.host}:"
                       f"{server.requested_port}: {exc.strerror or exc}; campaigns wait")
            if message != self.firmware_error:  # once, not every retry
                log.error(message, extra={"event": "firmware_endpoint_failed"})
            self.firmware_error = message
        else:
            self.firmware_error = None

    def _failed(self, message: str, level: int, *, exc_info: bool = False) -> None:
        # Once per distinct problem, not every half second.
        if message != self.last_error:
            log.log(level, "dispatcher pass failed; will retry", exc_info=exc_info,
                    extra={"event": "dispatch_failed", "error": message})
        self.last_error = message

    def _recovered(self) -> None:
        if self.last_error is not None:
            log.info("dispatcher recovered", extra={"event": "dispatch_recovered"})
            self.last_error = None
