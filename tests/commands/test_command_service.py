"""CommandService over a real SQLite store and a fake broker: the state machine's rules —
deliver to online devices only, repeat unanswered ones, expire, never leave a final state,
refuse what cannot be sent — and what a broker or store outage does to them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.control.commands import (
    ACK_GRACE_MS,
    DELIVER,
    EXPIRE,
    WAIT,
    CommandError,
    CommandService,
    next_step,
)
from iotmeter_tui.backend.control.dispatch import Dispatcher
from iotmeter_tui.backend.errors import StoreUnavailable
from iotmeter_tui.backend.stores.factory import open_metadata
from iotmeter_tui.backend.stores.metadata import Command, MetadataStore
from testsupport.commands import FakePublisher, register
from testsupport.fleet import wait_for


class Clock:
    def __init__(self, at: float = 1_800_000_000.0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


@pytest.fixture
def metadata(tmp_path: Path) -> Iterator[MetadataStore]:
    store = open_metadata(f"sqlite:///{tmp_path}/meta.db")
    yield store
    store.close()


def service(metadata: MetadataStore, publisher: FakePublisher | None,
            clock: Clock) -> CommandService:
    return CommandService(metadata, publisher, redeliver_after_s=10, clock=clock)


def cmd(state: str, *, sent_at: int | None = None, expires_at: int = 100_000) -> Command:
    return Command("cmd-1", "dc-1", "ping", {}, state, 0, 0, expires_at, 1, None, None, sent_at)


@pytest.mark.parametrize(
    ("command", "online", "now", "step"),
    [
        (cmd("queued"), True, 50_000, DELIVER),
        (cmd("queued"), False, 50_000, WAIT),  # offline: stays queued
        (cmd("sent", sent_at=45_000), True, 50_000, WAIT),  # answer may be on its way
        (cmd("sent", sent_at=40_000), True, 50_000, DELIVER),  # unanswered for 10 s: again
        (cmd("accepted", sent_at=0), True, 50_000, WAIT),  # under way on the device
        (cmd("queued"), True, 100_000, WAIT),  # expired: never sent any more
        (cmd("queued"), True, 100_000 + ACK_GRACE_MS, EXPIRE),
        (cmd("accepted"), True, 100_000 + ACK_GRACE_MS, EXPIRE),
        (cmd("done"), True, 10**9, WAIT),  # final stays final
    ],
)
def test_next_step(command: Command, online: bool, now: int, step: str) -> None:
    assert next_step(command, online=online, now_ms=now, redeliver_after_ms=10_000)[0] == step


def test_an_online_device_gets_the_command_at_once(metadata: MetadataStore) -> None:
    register(metadata, "dc-1")
    broker, clock = FakePublisher(), Clock()
    sent = service(metadata, broker, clock).send("dc-1", "set_interval", {"interval_s": 0.5},
                                                 timeout_s=30)
    assert (sent.state, sent.attempts, sent.sent_at) == ("sent", 1, int(clock.at * 1000))
    (message,) = broker.decoded()
    assert message.id == sent.id and message.body["params"] == {"interval_s": 0.5}
    assert message.expires_ts - message.ts == 30_000
    assert broker.sent[0][0] == protocol.command_topic("dc-1")


def test_an_offline_device_waits_then_gets_it_when_back(metadata: MetadataStore) -> None:
    register(metadata, "dc-1", online=False)
    broker, clock = FakePublisher(), Clock()
    commands = service(metadata, broker, clock)
    queued = commands.send("dc-1", "ping", timeout_s=60)
    assert queued.state == "queued" and broker.sent == []
    clock.at += 5
    assert commands.dispatch() == 0
    register(metadata, "dc-1", online=True, at=2000)
    assert commands.dispatch() == 1
    delivered = commands.get(queued.id)
    assert delivered is not None and (delivered.state, delivered.attempts) == ("sent", 1)


def test_unanswered_commands_are_repeated_then_time_out(metadata: MetadataStore) -> None:
    register(metadata, "dc-1")
    broker, clock = FakePublisher(), Clock()
    commands = service(metadata, broker, clock)
    sent = commands.send("dc-1", "ping", timeout_s=25)
    for _ in range(3):
        clock.at += 10
        commands.dispatch()
    # Published at 0, 10 and 20 s; at 30 s (past 25 s + grace) it is timed out.
    assert [m.id for m in broker.decoded()] == [sent.id] * 3
    assert len({p for _, p in broker.sent}) == 1, "every delivery is the same message"
    final = commands.get(sent.id)
    assert final is not None and final.state == "timed_out"
    assert final.detail == "no answer from the device before the command expired (3 deliveries)"


def test_a_final_answer_is_never_overwritten(metadata: MetadataStore) -> None:
    register(metadata, "dc-1")
    broker, clock = FakePublisher(), Clock()
    commands = service(metadata, broker, clock)
    sent = commands.send("dc-1", "ping", timeout_s=5)
    metadata.update_command(sent.id, state="done", at=1, result="done", detail="pong")
    clock.at += 60
    commands.dispatch()
    final = commands.wait(sent.id, timeout_s=0)
    assert (final.state, final.detail, final.attempts) == ("done", "pong", 1)


def test_an_unknown_command_is_stored_rejected_and_never_sent(metadata: MetadataStore) -> None:
    register(metadata, "dc-1")
    broker = FakePublisher()
    refused = service(metadata, broker, Clock()).send("dc-1", "self_destruct")
    assert refused.state == "rejected" and "unknown command 'self_destruct'" in (
        refused.detail or "")
    assert broker.sent == []
    assert metadata.get_command(refused.id) == refused


@pytest.mark.parametrize(
    ("device", "name", "params", "timeout", "message"),
    [
        ("nobody", "ping", {}, 10, "unknown device 'nobody'"),
        ("-bad", "ping", {}, 10, "not a device id"),
        ("dc-1", "ping pong", {}, 10, "not a command name"),
        ("dc-1", "ping", {"x": float("nan")}, 10, "not JSON"),
        ("dc-1", "ping", {}, 0, "timeout"),
        ("dc-1", "ping", {}, float("inf"), "timeout"),
        ("dc-1", "set_config", {"blob": "x" * 70_000}, 10, "too large"),
    ],
)
def test_requests_that_cannot_be_sent_are_refused(metadata: MetadataStore, device: str,
                                                  name: str, params: dict[str, object],
                                                  timeout: float, message: str) -> None:
    register(metadata, "dc-1")
    with pytest.raises(CommandError, match=message):
        service(metadata, FakePublisher(), Clock()).send(device, name, params, timeout)
    assert metadata.list_commands() == []


def test_broker_down_leaves_commands_queued_and_uncounted(metadata: MetadataStore) -> None:
    register(metadata, "dc-1")
    broker, clock = FakePublisher(), Clock()
    broker.connected = False
    commands = service(metadata, broker, clock)
    first = commands.send("dc-1", "ping", timeout_s=60)
    clock.at += 1
    second = commands.send("dc-1", "ping", timeout_s=60)
    commands.dispatch()
    assert [(c.state, c.attempts) for c in commands.list()] == [("queued", 0)] * 2
    # Connected but no PUBACK: the attempt counts, the command goes back to queued, and the
    # pass stops at the first failure instead of waiting on every command.
    broker.connected, broker.fail = True, True
    commands.dispatch()
    states = {c.id: (c.state, c.attempts) for c in commands.list()}
    assert states == {first.id: ("queued", 1), second.id: ("queued", 0)}
    broker.fail = False
    assert commands.dispatch() == 2
    assert {c.state for c in commands.list()} == {"sent"}


class FlakyStore:
    """A metadata store whose database is down while `down` is set."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self.down = False

    def __getattr__(self, name: str) -> object:
        if self.down:
            def refuse(*_a: object, **_k: object) -> object:
                raise StoreUnavailable("sqlite", "database is down (test)")
            return refuse
        return getattr(self._store, name)


def test_the_dispatcher_survives_a_store_outage(metadata: MetadataStore) -> None:
    register(metadata, "dc-1", online=False)
    flaky = FlakyStore(metadata)
    broker = FakePublisher()
    commands = CommandService(flaky, broker)  # type: ignore[arg-type]
    queued = commands.send("dc-1", "ping", timeout_s=60)
    dispatcher = Dispatcher(commands, None, interval_s=0.05)
    flaky.down = True
    dispatcher.start()
    try:
        wait_for(lambda: dispatcher.last_error is not None, timeout_s=5, what="outage seen")
        assert "database is down" in (dispatcher.last_error or "")
        register(metadata, "dc-1", online=True, at=2000)
        flaky.down = False
        wait_for(lambda: broker.sent, timeout_s=10, what="delivery after the outage")
        wait_for(lambda: dispatcher.last_error is None, timeout_s=5, what="recovered")
    finally:
        dispatcher.stop()
    assert [m.id for m in broker.decoded()] == [queued.id]


def test_wait_expires_a_command_even_without_a_collector(metadata: MetadataStore) -> None:
    register(metadata, "dc-1", online=False)
    commands = CommandService(metadata, None)
    queued = commands.send("dc-1", "ping", timeout_s=0.2)
    final = commands.wait(queued.id, timeout_s=10, poll_s=0.05)
    assert final.state == "timed_out"
    assert final.detail == "the device was not online before the command expired"
