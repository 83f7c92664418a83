"""`iotmeter device|archive|apikey|audit` as an operator meets them: main() in process on a
real store set (embedded SQLite + directory, or PostgreSQL + S3 over HTTP), and the real
command in a child process where output framing matters (the key on the last line, a pipe
closed early)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iotmeter_tui.backend.apikeys import ApiKeyService
from iotmeter_tui.backend.audit import cli_actor
from iotmeter_tui.backend.stores import open_stores
from iotmeter_tui.backend.stores.archive_writer import ArchiveRecord, ArchiveWriter, RejectedRecord
from iotmeter_tui.cli import main
from iotmeter_tui.cli.admin import moment
from testsupport.harness import settings_for

REPO = Path(__file__).resolve().parents[2]
T0 = 1_795_740_000_000


@pytest.fixture
def env(store_env: dict[str, str], iotmeter_home: Path,
        monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in store_env.items():
        monkeypatch.setenv(key, value)
    return {"IOTMETER_HOME": str(iotmeter_home), **store_env}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def audit_actions(capsys: pytest.CaptureFixture[str]) -> list[tuple[str, str, str, str]]:
    code, out, _ = run(capsys, "audit", "--json")
    assert code == 0
    return [(e["actor"], e["action"], e["target"], e["result"])
            for e in map(json.loads, reversed(out.splitlines()))]


def test_device_lifecycle(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "device", "add", "dc-0001", "--type", "power_meter_dc",
                       "--name", "Feeder 7", "--location", "Depot North", "--meta", "rack=3",
                       "--meta", "tag=spare")
    assert (code, out) == (0, "device dc-0001 registered (power_meter_dc)\n")
    run(capsys, "device", "add", "ac-0002", "--type", "power_meter_ac")

    code, out, _ = run(capsys, "device", "list", "--search", "depot")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:3] == ["ID", "TYPE", "STATUS"]
    assert row.split()[:3] == ["dc-0001", "power_meter_dc", "unknown"]
    assert "Feeder 7" in row and "Depot North" in row
    code, out, _ = run(capsys, "device", "list", "--type", "power_meter_ac", "--json")
    assert [json.loads(line)["device_id"] for line in out.splitlines()] == ["ac-0002"]

    code, out, err = run(capsys, "device", "set-config", "dc-0001", "interval_s=0.5",
                         "nominal_v=750", "x_note=spare unit", "--timeout", "3600")
    assert code == 0, err
    summary, command_id = out.splitlines()
    code, out, _ = run(capsys, "command", "show", command_id, "--json")
    sent = json.loads(out)
    assert (sent["name"], sent["params"], sent["state"], sent["created_by"]) == (
        "set_config", {"interval_s": 0.5}, "queued", cli_actor())
    assert sent["expires_at"] - sent["created_at"] == 3_600_000
    assert summary == 'config of dc-0001: interval_s=0.5, nominal_v=750, x_note="spare unit"'
    assert command_id.startswith("cmd-") and "set_config with interval_s=0.5" in err
    code, out, err = run(capsys, "device", "set-config", "dc-0001", "nominal_v=900",
                         "--unset", "x_note")
    assert code == 0 and out == "config of dc-0001: interval_s=0.5, nominal_v=900\n"
    assert "no command sent: no device-applied key changed" in err

    code, out, _ = run(capsys, "device", "show", "dc-0001", "--json")
    shown = json.loads(out)
    assert shown["name"] == "Feeder 7" and shown["metadata"] == {"rack": 3, "tag": "spare"}
    assert shown["config"] == {"interval_s": 0.5, "nominal_v": 900}
    code, out, _ = run(capsys, "device", "show", "dc-0001")
    assert "config:      nominal_v=900" in out.splitlines()

    code, out, err = run(capsys, "device", "rm", "dc-0001", "--yes")
    assert code == 0 and out.startswith("device dc-0001 deleted: 1 open command(s) failed")
    code, _, err = run(capsys, "device", "show", "dc-0001")
    assert code == 1 and err == "iotmeter: no device 'dc-0001'\n"

    me = cli_actor()
    assert audit_actions(capsys) == [
        (me, "device.create", "dc-0001", "ok"), (me, "device.create", "ac-0002", "ok"),
        (me, "device.config", "dc-0001", "ok"), (me, "device.config", "dc-0001", "ok"),
        (me, "device.delete", "dc-0001", "ok")]


def test_device_refusals_are_one_line(env: dict[str, str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "device", "add", "dc-0001")
    for args, message in [
        (("device", "add", "dc-0001"), "device 'dc-0001' is already registered"),
        (("device", "add", "bad id"), "'bad id' is not a device id"),
        (("device", "set-config", "dc-0001", "volts=3"), "config 'volts' is not a known key"),
        (("device", "set-config", "dc-0001", "interval_s=fast"),
         "config interval_s: must be a number"),
        (("device", "set-config", "nobody", "nominal_v=1"), "no device 'nobody'"),
        (("device", "rm", "nobody", "--yes"), "no device 'nobody'"),
    ]:
        code, out, err = run(capsys, *args)
        assert code == 1 and out == "", args
        assert len(err.splitlines()) == 1 and message in err, err
    assert [r for _, _, _, r in audit_actions(capsys)] == [
        "ok", "conflict", "invalid", "invalid", "invalid", "not_found", "not_found"]


def test_rm_without_yes_needs_a_terminal(env: dict[str, str],
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    run(capsys, "device", "add", "dc-0001")
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # noqa: SIM115 - closed by pytest
    code, out, err = run(capsys, "device", "rm", "dc-0001")
    assert code == 2 and "--yes" in err
    code, out, _ = run(capsys, "device", "list", "--json")
    assert len(out.splitlines()) == 1


def test_device_sent_text_is_escaped_in_tables(env: dict[str, str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_for(Path(env["IOTMETER_HOME"]), {
        k: v for k, v in env.items() if k != "IOTMETER_HOME"})
    stores = open_stores(settings)
    try:
        from iotmeter_tui.backend.stores.metadata import DeviceUpdate

        stores.metadata.apply_collector_batch(
            [DeviceUpdate("dc-0001", T0, device_type="power_meter_dc",
                          fw_version="1.0\x1b[2J\u202e")], [])
    finally:
        stores.close()
    code, out, _ = run(capsys, "device", "list")
    assert code == 0
    assert "\x1b" not in out and "\u202e" not in out
    # Shown, but defused (escaped or replaced: whichever the one terminal filter does).
    assert "1.0" in out and "[2J" in out


def write_archive(env: dict[str, str]) -> list[bytes]:
    settings = settings_for(Path(env["IOTMETER_HOME"]), {
        k: v for k, v in env.items() if k != "IOTMETER_HOME"})
    stores = open_stores(settings)
    writer = ArchiveWriter(stores.archive)
    lines = []
    try:
        for b in range(5):
            at = T0 + b * 3_600_000
            line = (f'{{"v":2,"device_id":"dc-1","msg_type":"telemetry","boot":1,"seq":{b},'
                    f'"ts":{at},"data":{{"note":"\\u001b[31m"}}}}').encode()
            lines.append(line)
            writer.write_batch([ArchiveRecord("dc-1", "telemetry", at, line)],
                               [RejectedRecord("not_json", "not JSON", "iot/dc-1/telemetry",
                                               "dc-1", at, b"\x1b]0;pwned\x07")], f"b{b}")
    finally:
        writer.close()
        stores.close()
    return lines


def test_archive_get_streams_ndjson(env: dict[str, str],
                                    capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    lines = write_archive(env)
    assert main(["archive", "get", "dc-1"]) == 0
    out, _ = capsysbinary.readouterr()
    assert out == b"".join(line + b"\n" for line in lines)
    assert main(["archive", "get", "dc-1", "--category", "telemetry",
                 "--since", str(T0 + 3_600_000), "--until", "2026-11-27T03:40:00Z"]) == 0
    out, _ = capsysbinary.readouterr()
    assert out.splitlines() == lines[1:3]
    assert main(["archive", "get", "dc-1", "--category", "hello"]) == 0
    assert capsysbinary.readouterr()[0] == b""
    assert main(["archive", "rejected", "--device", "dc-1"]) == 0
    out, _ = capsysbinary.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 5 and b"\x1b" not in out and b"\x07" not in out
    assert records[0]["payload"] == "\x1b]0;pwned\x07"


def test_apikeys(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "apikey", "create", "ci", "--role", "operator")
    assert code == 0
    secret = out.splitlines()[-1]
    assert secret.startswith("iotm_") and " " not in secret
    settings = settings_for(Path(env["IOTMETER_HOME"]), {
        k: v for k, v in env.items() if k != "IOTMETER_HOME"})
    stores = open_stores(settings)
    try:
        assert ApiKeyService(stores.metadata).verify(secret) is not None
    finally:
        stores.close()
    code, out, _ = run(capsys, "apikey", "list")
    assert secret not in out and out.splitlines()[1].split()[:2] == ["ci", "operator"]
    code, _, err = run(capsys, "apikey", "create", "ci", "--role", "viewer")
    assert code == 1 and "'ci' exists already" in err
    assert run(capsys, "apikey", "revoke", "ci")[:2] == (0, "API key ci revoked\n")
    code, _, err = run(capsys, "apikey", "revoke", "ci")
    assert code == 1 and err == "iotmeter: no active API key named 'ci'\n"
    audit = audit_actions(capsys)
    assert [(a, r) for _, a, _, r in audit] == [
        ("apikey.create", "ok"), ("apikey.create", "conflict"), ("apikey.revoke", "ok"),
        ("apikey.revoke", "not_found")]
    code, out, _ = run(capsys, "audit", "--action", "apikey.revoke", "--limit", "1")
    assert len(out.splitlines()) == 2 and "not_found" in out
    code, out, _ = run(capsys, "audit", "--actor", "someone-else")
    assert out.splitlines() == ["ID  AT (UTC)  ACTOR  ROLE  ACTION  TARGET  RESULT  DETAIL"]


def child(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")}
    clean["PYTHONPATH"] = str(REPO) + os.pathsep + clean.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, "-m", "iotmeter_tui", *args], cwd=REPO,
                            env={**clean, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@pytest.mark.parametrize("store_env", ["embedded"], indirect=True)
def test_the_real_command_prints_the_key_last_and_survives_a_closed_pipe(
        env: dict[str, str]) -> None:
    created = child(env, "apikey", "create", "ops", "--role", "admin")
    out, err = created.communicate(timeout=60)
    assert created.returncode == 0, err
    assert out.decode().splitlines()[-1].startswith("iotm_")
    write_archive(env)
    reader = child(env, "archive", "get", "dc-1")
    assert reader.stdout is not None
    first = reader.stdout.readline()
    reader.stdout.close()  # like `| head -1`
    _, err = reader.communicate(timeout=60)
    assert first.startswith(b'{"v":2') and reader.returncode == 0
    assert b"Traceback" not in err


def test_moment_reads_iso_epoch_and_ages() -> None:
    assert moment("1795740000000") == 1_795_740_000_000
    assert moment("2026-11-27T00:00:00Z") == moment("2026-11-27T00:00:00") == 1_795_737_600_000
    assert moment("2026-11-27T01:00:00+01:00") == 1_795_737_600_000
    assert moment("1h", now_ms=10_000_000) == 10_000_000 - 3_600_000
    assert moment("90s", now_ms=100_000) == 10_000
    assert moment("1.5d", now_ms=200_000_000) == 200_000_000 - 129_600_000


@pytest.mark.parametrize("store_env", ["embedded"], indirect=True)
def test_a_tampered_archive_line_reaches_a_terminal_escaped(env: dict[str, str]) -> None:
    import pty

    archive = Path(env["IOTMETER_HOME"]) / "archive" / "dc-1" / "telemetry" / "2026" / "11" / "27"
    archive.mkdir(parents=True)
    tampered = b'{"v":2,"device_id":"dc-1","ts":1,"note":"\x1b]0;pwned\x07\x1b[2J"}\n'
    (archive / "004000-x.ndjson").write_bytes(tampered)
    # To a pipe: the bytes exactly.
    piped = child(env, "archive", "get", "dc-1")
    out, _ = piped.communicate(timeout=60)
    assert out == tampered
    # To a terminal: escaped.
    master, slave = pty.openpty()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")}
    clean["PYTHONPATH"] = str(REPO) + os.pathsep + clean.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-m", "iotmeter_tui", "archive", "get", "dc-1"],
                            cwd=REPO, env={**clean, **env}, stdout=slave,
                            stderr=subprocess.PIPE)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0
    assert b"\x1b" not in seen and b"\x07" not in seen
    assert b"]0;pwned" in seen and b"[2J" in seen


def test_device_update_changes_only_what_is_given(env: dict[str, str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "device", "add", "dc-0001", "--name", "Feeder", "--location", "North",
        "--meta", "rack=3", "--meta", "tag=spare")
    code, out, _ = run(capsys, "device", "update", "dc-0001", "--location", "South",
                       "--meta", "tag=", "--meta", "bay=12")
    assert code == 0
    assert out == 'device dc-0001: name Feeder, location South, metadata {"bay": 12, "rack": 3}\n'
    code, out, _ = run(capsys, "device", "update", "dc-0001", "--name", "", "--replace-meta",
                       "--meta", "k=v")
    assert out == 'device dc-0001: name -, location South, metadata {"k": "v"}\n'
    code, _, err = run(capsys, "device", "update", "dc-0001")
    assert code == 2 and "nothing to change" in err
    code, _, err = run(capsys, "device", "update", "nobody", "--name", "x")
    assert code == 1 and err == "iotmeter: no device 'nobody'\n"
    code, _, err = run(capsys, "device", "update", "dc-0001", "--name", "a\x1b[2Jb")
    assert code == 1 and "control characters" in err
    assert [(a, r) for _, a, _, r in audit_actions(capsys)][1:] == [
        ("device.update", "ok"), ("device.update", "ok"), ("device.update", "not_found"),
        ("device.update", "invalid")]
