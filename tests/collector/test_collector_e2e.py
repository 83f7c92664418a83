"""The collector end to end, on a private broker and real stores (embedded and production):
duplicates stored once, gaps recorded, reordering tolerated, rejections archived and counted,
offline detection, reboots."""

from __future__ import annotations

import time
from pathlib import Path

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.collector.intake import INBOX_MAX_READS
from testsupport import MosquittoServer, S3Server
from testsupport.fleet import Device, Publisher, hello, status, telemetry, wait_for
from testsupport.harness import StoreAudit, running_collector, settings_for


def _seq_state(audit: StoreAudit, device_id: str, boot: int):  # type: ignore[no-untyped-def]
    for state in audit.stores.metadata.load_seq_states([device_id]):
        if state.boot == boot:
            return state
    return None


def test_duplicates_are_stored_once_and_counted(
    tmp_path: Path, private_mosquitto: MosquittoServer, store_env: dict[str, str]
) -> None:
    settings = settings_for(tmp_path, store_env, reorder_timeout_s=0.5)
    sent = [telemetry("dc-0001", 1, s) for s in range(20)]
    dups = [sent[3], sent[7], sent[7], sent[19]]
    with running_collector(settings, private_mosquitto.url) as collector:
        pub = Publisher(private_mosquitto.url)
        pub.publish(sent + dups)
        pub.close()
        audit = StoreAudit(settings)
        wait_for(lambda: len(audit.timeseries_keys("dc-0001")) == 20, what="20 points")
        wait_for(lambda: len(audit.archive_keys("dc-0001")) == 20, what="archive")
        wait_for(lambda: (s := _seq_state(audit, "dc-0001", 1)) and s.duplicates == 4,
                 what="duplicates recorded")
        assert collector.metrics.sample("iotmeter_messages_duplicate_total") == 4
    expected = {(1, s): 1 for s in range(20)}
    assert dict(audit.timeseries_keys("dc-0001")) == expected
    assert dict(audit.archive_keys("dc-0001")) == expected
    state = _seq_state(audit, "dc-0001", 1)
    assert state is not None
    assert (state.highest_seq, state.received, state.missing) == (19, 20, 0)
    audit.close()


def test_gaps_recorded_after_timeout_and_reordering_is_not_a_gap(
    tmp_path: Path, private_mosquitto: MosquittoServer, store_env: dict[str, str]
) -> None:
    settings = settings_for(tmp_path, store_env, reorder_timeout_s=0.5)
    gappy = [telemetry("dc-gap", 0, s) for s in (0, 1, 2, 6, 7)]  # 3..5 never come
    reordered = [telemetry("dc-ord", 0, s) for s in (0, 2, 1, 4, 3, 5)]
    with running_collector(settings, private_mosquitto.url) as collector:
        pub = Publisher(private_mosquitto.url)
        pub.publish(gappy + reordered)
        pub.close()
        audit = StoreAudit(settings)
        gap = wait_for(lambda: (s := _seq_state(audit, "dc-gap", 0)) and s.missing == 3 and s,
                       what="gap of 3 recorded")
        assert gap.gaps == ((3, 5),)
        wait_for(lambda: collector.metrics.sample("iotmeter_seq_gaps_total") == 3,
                 what="gap metric")
        ordered = wait_for(lambda: (s := _seq_state(audit, "dc-ord", 0)) and s.received == 6
                           and s, what="reordered stream")
        assert ordered.missing == 0 and ordered.gaps == ()
        assert len(audit.timeseries_keys("dc-ord")) == 6
    audit.close()


REJECTS: dict[str, tuple[str, bytes]] = {
    "bad_topic": ("iot/-not-an-id/telemetry", b"{}"),  # the wildcard matches any segment
    "too_large": ("iot/dc-0001/telemetry", b" " * (protocol.MAX_PAYLOAD_BYTES + 1)),
    "not_utf8": ("iot/dc-0001/telemetry", b"\xff\xfe"),
    "not_json": ("iot/dc-0001/telemetry", b"{nope"),
    "not_object": ("iot/dc-0001/telemetry", b"[1, 2]"),
    "bad_version": ("iot/dc-0001/telemetry", b'{"v": 1}'),
    "bad_device_id": ("iot/dc-0001/telemetry", b'{"v": 2, "device_id": "-x"}'),
    "device_mismatch": ("iot/dc-0001/telemetry", b'{"v": 2, "device_id": "dc-0002"}'),
    "type_mismatch": ("iot/dc-0001/telemetry",
                      b'{"v": 2, "device_id": "dc-0001", "msg_type": "hello"}'),
    "bad_seq": ("iot/dc-0001/telemetry", b'{"v": 2, "device_id": "dc-0001", '
                b'"msg_type": "telemetry", "boot": 1, "seq": -1}'),
    "bad_ts": ("iot/dc-0001/telemetry", b'{"v": 2, "device_id": "dc-0001", '
               b'"msg_type": "telemetry", "boot": 1, "seq": 1, "ts": "now"}'),
    "bad_field": ("iot/dc-0001/telemetry", b'{"v": 2, "device_id": "dc-0001", '
                  b'"msg_type": "telemetry", "boot": 1, "seq": 1, "ts": 5, '
                  b'"data": {"voltage_v": true}}'),
}


def test_every_rejection_is_archived_with_its_reason_and_counted(
    tmp_path: Path, private_mosquitto: MosquittoServer, store_env: dict[str, str]
) -> None:
    # Every reason decode() can give, plus unknown_device from the collector itself.
    assert set(REJECTS) | {"unknown_device", "field_budget"} == set(protocol.REJECTION_REASONS)
    settings = settings_for(tmp_path, store_env)
    with running_collector(settings, private_mosquitto.url) as collector:
        pub = Publisher(private_mosquitto.url)
        pub.publish(REJECTS.values())
        pub.close()
        m = collector.metrics
        wait_for(lambda: sum(m.sample("iotmeter_messages_rejected_total", {"reason": r})
                             for r in REJECTS) == len(REJECTS), what="rejections counted")
        for reason in REJECTS:
            assert m.sample("iotmeter_messages_rejected_total", {"reason": reason}) == 1
        audit = StoreAudit(settings)
        rows = wait_for(lambda: len(r := audit.rejected()) == len(REJECTS) and r,
                        what="rejections archived")
    by_reason = {row["reason"]: row for row in rows}
    assert set(by_reason) == set(REJECTS)
    for reason, (topic, payload) in REJECTS.items():
        row = by_reason[reason]
        assert row["topic"] == topic
        if reason == "not_utf8":
            assert "payload_b64" in row
        elif reason == "too_large":  # a bounded prefix, and the length in the detail
            assert row["payload"].encode() == payload[:protocol.TOO_LARGE_PREFIX_BYTES]
            assert f"{len(payload)} bytes" in row["detail"]
        else:
            assert row["payload"].encode() == payload
    audit.close()


def test_unknown_device_rejected_when_auto_register_is_off(
    tmp_path: Path, private_mosquitto: MosquittoServer
) -> None:
    settings = settings_for(tmp_path, {}, auto_register="false")
    with running_collector(settings, private_mosquitto.url) as collector:
        pub = Publisher(private_mosquitto.url)
        pub.publish([telemetry("stranger-1", 0, 0)])
        pub.close()
        wait_for(lambda: collector.metrics.sample("iotmeter_messages_rejected_total",
                                                  {"reason": "unknown_device"}) == 1,
                 what="unknown_device rejection")
        audit = StoreAudit(settings)
        assert audit.stores.metadata.get_device("stranger-1") is None
    audit.close()


def test_last_will_and_silence_both_mark_a_device_offline(
    tmp_path: Path, private_mosquitto: MosquittoServer, store_env: dict[str, str]
) -> None:
    settings = settings_for(tmp_path, store_env)
    with running_collector(settings, private_mosquitto.url):
        audit = StoreAudit(settings)
        meta = audit.stores.metadata
        # Last Will: the connection vanishes, the broker publishes "offline".
        dying = Device(private_mosquitto.url, "dc-will", boot=2)
        dying.publish(*status("dc-will", "online", boot=2), retain=True)
        dying.publish(*hello("dc-will", 2, 0))
        wait_for(lambda: (d := meta.get_device("dc-will")) and d.connection_status == "online",
                 what="dc-will online")
        dying.drop()
        wait_for(lambda: meta.get_device("dc-will").connection_status == "offline",
                 timeout_s=20, what="Last Will marks dc-will offline")
        # Silence: a device with a 1 s heartbeat that stops talking is offline after 3 s.
        pub = Publisher(private_mosquitto.url)
        pub.publish([hello("dc-quiet", 0, 0, heartbeat_s=1.0), telemetry("dc-quiet", 0, 1)])
        pub.close()
        wait_for(lambda: (d := meta.get_device("dc-quiet")) and d.connection_status == "online",
                 what="dc-quiet online")
        wait_for(lambda: meta.get_device("dc-quiet").connection_status == "offline",
                 timeout_s=15, what="silence marks dc-quiet offline")
        device = meta.get_device("dc-quiet")
        assert device is not None and device.device_type == "power_meter_dc"
    audit.close()


def test_reboot_is_not_mistaken_for_duplicates(
    tmp_path: Path, private_mosquitto: MosquittoServer, store_env: dict[str, str]
) -> None:
    settings = settings_for(tmp_path, store_env)
    first = [telemetry("ac-0001", 4, s) for s in range(10)]
    second = [telemetry("ac-0001", 5, s) for s in range(10)]  # new boot, seq from 0
    with running_collector(settings, private_mosquitto.url) as collector:
        pub = Publisher(private_mosquitto.url)
        pub.publish([hello("ac-0001", 4, 10, device_type="power_meter_ac"), *first])
        pub.publish([hello("ac-0001", 5, 10, device_type="power_meter_ac",
                           fw_version="1.1.0"), *second])
        pub.close()
        audit = StoreAudit(settings)
        wait_for(lambda: len(audit.timeseries_keys("ac-0001")) == 20, what="both boots stored")
        assert collector.metrics.sample("iotmeter_messages_duplicate_total") == 0
        device = wait_for(lambda: (d := audit.stores.metadata.get_device("ac-0001")) and
                          d.boot == 5 and d, what="registry shows boot 5")
        assert device.fw_version == "1.1.0" and device.device_type == "power_meter_ac"
        points = audit.stores.timeseries.points("ac-0001")
        assert {p.device_type for p in points} == {"power_meter_ac"}
    audit.close()


def test_two_collectors_sharing_a_subscription_store_everything_once(
    tmp_path: Path, private_mosquitto: MosquittoServer, store_env: dict[str, str]
) -> None:
    first = settings_for(tmp_path, store_env, share_group="collectors", client_id="col-a",
                         reorder_timeout_s=0.5)
    second = settings_for(tmp_path, store_env, share_group="collectors", client_id="col-b",
                          reorder_timeout_s=0.5)
    devices = ["dc-0001", "dc-0002", "ac-0003"]
    sent = [telemetry(d, 1, s) for s in range(100) for d in devices]
    with running_collector(first, private_mosquitto.url) as a, \
            running_collector(second, private_mosquitto.url) as b:
        pub = Publisher(private_mosquitto.url)
        pub.publish(sent)
        pub.close()
        audit = StoreAudit(first)
        expected = {(1, s): 1 for s in range(100)}
        for device_id in devices:
            wait_for(lambda d=device_id: dict(audit.timeseries_keys(d)) == expected,
                     what=f"time series of {device_id}")
            wait_for(lambda d=device_id: dict(audit.archive_keys(d)) == expected,
                     what=f"archive of {device_id}")
        meta = audit.stores.metadata
        merged = wait_for(lambda: (s := _seq_state(audit, "dc-0001", 1)) and s.received == 100
                          and s, what="merged sequence state")
        assert (merged.highest_seq, merged.missing, merged.gaps) == (99, 0, ())
        # The broker split the work: each collector took part and kept its own rows.
        share_a = a.metrics.sample("iotmeter_messages_accepted_total", {"msg_type": "telemetry"})
        share_b = b.metrics.sample("iotmeter_messages_accepted_total", {"msg_type": "telemetry"})
        assert share_a > 0 and share_b > 0 and share_a + share_b == len(sent)
        own = meta.load_seq_states(["dc-0001"], collector="col-a")
        assert own and own[0].received < 100
        # Each collector's local "gaps" are the other's share: no gap is reported.
        assert a.metrics.sample("iotmeter_seq_gaps_total") == 0
    audit.close()


def test_an_oversized_packet_is_skipped_counted_and_the_collector_goes_on(
    tmp_path: Path, store_env: dict[str, str]
) -> None:
    """Issue 15 item 2. A broker iotmeter did not configure (no max_packet_size) forwards a
    4 MiB message: the collector's decoder used to buffer up to 256 MB per packet. Now it skips
    the packet's bytes as they stream in, rejects it as too_large keeping only a prefix and its
    length, acknowledges it once that is spooled (so the broker does not hand it back), and
    the messages after it on the same connection are stored."""
    settings = settings_for(tmp_path, store_env)
    huge = b'{"v": 2, "pad": "' + b"x" * (4 << 20) + b'"}'
    with MosquittoServer(max_packet_size=0) as broker:
        with running_collector(settings, broker.url) as collector:
            assert collector.inbox.maxsize == INBOX_MAX_READS  # bounded
            pub = Publisher(broker.url)
            pub.publish([telemetry("dc-0001", 1, 0), ("iot/dc-0001/telemetry", huge),
                         *[telemetry("dc-0001", 1, s) for s in range(1, 6)]])
            pub.close()
            audit = StoreAudit(settings)
            wait_for(lambda: len(audit.timeseries_keys("dc-0001")) == 6, what="6 points")
            m = collector.metrics
            assert m.sample("iotmeter_messages_rejected_total", {"reason": "too_large"}) == 1
            row = wait_for(lambda: (r := audit.rejected()) and r[0], what="rejection archived")
            assert row["reason"] == "too_large" and row["topic"] == "iot/dc-0001/telemetry"
            assert row["payload"].encode() == huge[:protocol.TOO_LARGE_PREFIX_BYTES]
            assert f"{len(huge)} bytes" in row["detail"]
            wait_for(lambda: m.sample("iotmeter_messages_acked_total") == 7, what="all acked")
        # Acknowledged: a new session on the same client id gets nothing back.
        with running_collector(settings, broker.url) as collector:
            pub = Publisher(broker.url)
            pub.publish([telemetry("dc-0001", 1, 6)])
            pub.close()
            wait_for(lambda: len(audit.timeseries_keys("dc-0001")) == 7, what="7 points")
            assert collector.metrics.sample("iotmeter_messages_received_total") == 1
        audit.close()
    assert len(StoreAudit(settings).rejected()) == 1


def test_the_embedded_broker_refuses_an_oversized_packet(
    tmp_path: Path, private_mosquitto: MosquittoServer, store_env: dict[str, str]
) -> None:
    """The embedded and test brokers carry max_packet_size: the packet never reaches the
    collector, and the device sending it is cut off while the rest of the fleet goes on."""
    assert f"max_packet_size {protocol.BROKER_MAX_PACKET_BYTES}" in \
        private_mosquitto.broker.config_path.read_text()
    settings = settings_for(tmp_path, store_env)
    with running_collector(settings, private_mosquitto.url) as collector:
        rogue = Publisher(private_mosquitto.url, "rogue")
        rogue.publish([("iot/dc-0002/telemetry",
                        b"x" * (protocol.BROKER_MAX_PACKET_BYTES + 1))], qos=0)
        rogue.close()
        pub = Publisher(private_mosquitto.url)
        pub.publish([telemetry("dc-0001", 1, s) for s in range(3)])
        pub.close()
        audit = StoreAudit(settings)
        wait_for(lambda: len(audit.timeseries_keys("dc-0001")) == 3, what="3 points")
        assert collector.metrics.sample("iotmeter_messages_received_total") == 3
        audit.close()


def test_a_qos0_flood_while_the_spool_is_held_stays_bounded_and_loses_nothing_accepted(
    tmp_path: Path, private_mosquitto: MosquittoServer, private_s3: S3Server
) -> None:
    """Issue 15 item 7, end to end. The archive (S3) goes down, so no spool segment is
    released and the small spool fills: the pipeline holds its turn. A QoS 0 flood then used
    to grow the intake queue without end. Now the queue stays within its bound (the intake
    stops reading), and once S3 is back everything the collector accepted is stored and every
    QoS 1 message arrives."""
    settings = settings_for(tmp_path, {
        "IOTMETER_ARCHIVE_URL": "s3://held-spool", "IOTMETER_S3_ENDPOINT": private_s3.endpoint,
        "IOTMETER_S3_ACCESS_KEY": private_s3.access_key,
        "IOTMETER_S3_SECRET_KEY": private_s3.secret_key,
        "IOTMETER_S3_REGION": private_s3.region}, spool_max_bytes=300_000)
    with running_collector(settings, private_mosquitto.url) as collector:
        private_s3.stop()
        flooder = Publisher(private_mosquitto.url, "flooder")
        try:
            flooder.publish([telemetry("dc-flood", 1, s) for s in range(30_000)], qos=0)
            pub = Publisher(private_mosquitto.url, "qos1", persistent=True)
            sent = pub.publish([telemetry("dc-qos1", 1, s) for s in range(200)], qos=1)
            pub.close()
            m = collector.metrics
            wait_for(lambda: m.sample("iotmeter_spool_full") == 1, what="spool full")
            # The dashboard's view says so too (the archive is down: it stays full meanwhile).
            assert collector.health().spool_full
            most = 0
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                most = max(most, collector.inbox.qsize())
                time.sleep(0.02)
            assert collector.inbox.maxsize == INBOX_MAX_READS
            assert most == INBOX_MAX_READS  # it filled, and went no further
        finally:
            flooder.close()
            private_s3.start()
        wait_for(lambda: m.sample("iotmeter_spool_full") == 0, timeout_s=60,
                 what="spool released")
        audit = StoreAudit(settings)
        wait_for(lambda: len(audit.timeseries_keys("dc-qos1")) == sent, timeout_s=60,
                 what="every QoS 1 message stored")
        accepted = m.sample("iotmeter_messages_accepted_total", {"msg_type": "telemetry"})
        wait_for(lambda: len(audit.timeseries_keys("dc-flood")) + sent == accepted,
                 timeout_s=60, what="everything accepted stored")
        flood = audit.timeseries_keys("dc-flood")
        assert all(n == 1 for n in flood.values())
    audit.close()
