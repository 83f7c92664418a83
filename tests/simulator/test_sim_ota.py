"""OTA as a device sees it: a firmware file served over HTTP on loopback, a good image going
through every state to a reboot with the new version, a bad one failing with the old kept."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.control.signing import sign_digest


@pytest.fixture
def firmware_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, directory) of a plain HTTP server on a free loopback port."""
    directory = tmp_path / "firmware"
    directory.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a device hanging up on an oversized image is expected here

    handler = functools.partial(Quiet, directory=str(directory))
    server = Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", directory
    server.shutdown()
    server.server_close()


def test_ota_good_and_bad_images(mosquitto: Any, prefix: str, recorder_factory: Any,
                                 controller_factory: Any, server_factory: Any,
                                 firmware_server: tuple[str, Path]) -> None:
    base, directory = firmware_server
    image = bytes(range(256)) * 1200  # 300 KiB: several progress steps
    (directory / "meter-2.0.0.bin").write_bytes(image)
    good_sha = hashlib.sha256(image).hexdigest()

    recorder = recorder_factory(mosquitto.url, prefix)
    server = server_factory(mosquitto.url)
    controller = controller_factory(mosquitto.url, prefix)
    [device] = controller.start(1, "dc", rate=10)
    recorder.wait_for(lambda: recorder.of(protocol.HELLO, device), what="hello")

    # A bad hash: verification fails, the device keeps 1.0.0 and does not reboot.
    bad = server.offer(device, fw_version="2.0.0", url=f"{base}/meter-2.0.0.bin",
                       sha256="0" * 64, size=len(image))
    recorder.wait_for(lambda: recorder.ota(bad) and recorder.ota(bad)[-1]["state"] == "failed",
                      what="failed OTA")
    failed = recorder.ota(bad)[-1]
    assert failed["fw_version"] == "2.0.0" and "sha256 mismatch" in failed["error"]
    wrong_size = server.offer(device, fw_version="2.0.0", url=f"{base}/meter-2.0.0.bin",
                              sha256=good_sha, size=len(image) - 1)
    recorder.wait_for(lambda: recorder.ota(wrong_size)
                      and recorder.ota(wrong_size)[-1]["state"] == "failed", what="size")
    assert "larger than the offered" in recorder.ota(wrong_size)[-1]["error"]
    missing = server.offer(device, fw_version="2.0.0", url=f"{base}/nope.bin",
                           sha256=good_sha, size=len(image))
    recorder.wait_for(lambda: recorder.ota(missing)
                      and recorder.ota(missing)[-1]["state"] == "failed", what="404")
    assert recorder.ota(missing)[-1]["error"].startswith("HTTP 404")
    assert controller.devices()[0].fw_version == "1.0.0"
    assert {r.message().boot for r in recorder.messages} <= {1, None}, "no reboot"

    # A good image: every state in order, a reboot, and the next hello says 2.0.0.
    good = server.offer(device, fw_version="2.0.0", url=f"{base}/meter-2.0.0.bin",
                        sha256=good_sha, size=len(image))
    recorder.wait_for(lambda: recorder.ota(good) and recorder.ota(good)[-1]["state"] == "done",
                      what="OTA done")
    states = [(s["state"], s["progress_pct"]) for s in recorder.ota(good)]
    assert states == [("downloading", 0), ("downloading", 25), ("downloading", 50),
                      ("downloading", 75), ("downloading", 100), ("verifying", 100),
                      ("installing", 100), ("rebooting", 100), ("done", 100)]
    assert all(s["error"] is None for s in recorder.ota(good))
    first = recorder.assert_clean_sequence(device, boot=2)[0]
    assert first.msg_type == protocol.HELLO and first.data["fw_version"] == "2.0.0"
    done = next(m for m in recorder.of(protocol.OTA_STATUS, device)
            if m.data["campaign_id"] == good and m.data["state"] == "done")
    assert done.boot == 2, "done is reported by the new firmware, after the reboot"

    # The same campaign again: not installed twice, the outcome repeated.
    server.offer(device, fw_version="2.0.0", url=f"{base}/meter-2.0.0.bin", sha256=good_sha,
                 size=len(image), campaign_id=good)
    recorder.wait_for(lambda: len(recorder.ota(good)) == 10, what="repeated outcome")
    assert recorder.ota(good)[-1]["state"] == "done"

    # The new version survives a simulator restart (it is in the state file).
    controller.stop()
    again = controller_factory(mosquitto.url, prefix)
    again.start(1, "dc", rate=10)
    recorder.wait_for(lambda: [m for m in recorder.of(protocol.HELLO, device) if m.boot == 3],
                      what="boot 3 hello")
    assert next(m for m in recorder.of(protocol.HELLO, device)
            if m.boot == 3).data["fw_version"] == "2.0.0"


def test_a_pinned_key_makes_the_signature_mandatory(mosquitto: Any, prefix: str,
                                                    recorder_factory: Any,
                                                    controller_factory: Any, server_factory: Any,
                                                    firmware_server: tuple[str, Path]) -> None:
    base, directory = firmware_server
    release_key, other_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    image = bytes(range(256)) * 200
    (directory / "meter-3.0.0.bin").write_bytes(image)
    sha = hashlib.sha256(image).hexdigest()
    # Whoever can publish offers also chooses the sha256: here an attacker's own image.
    evil = image[:-1] + b"\x00"
    (directory / "evil.bin").write_bytes(evil)
    evil_sha = hashlib.sha256(evil).hexdigest()

    recorder = recorder_factory(mosquitto.url, prefix)
    server = server_factory(mosquitto.url)
    controller = controller_factory(mosquitto.url, prefix,
                                    firmware_key=release_key.public_key())
    [device] = controller.start(1, "dc", rate=10)
    recorder.wait_for(lambda: recorder.of(protocol.HELLO, device), what="hello")

    def outcome(campaign: str) -> dict[str, Any]:
        recorder.wait_for(lambda: recorder.ota(campaign)
                          and recorder.ota(campaign)[-1]["state"] in ("failed", "done"),
                          what=f"outcome of {campaign}")
        return dict(recorder.ota(campaign)[-1])

    url = f"{base}/meter-3.0.0.bin"
    unsigned = server.offer(device, fw_version="3.0.0", url=url, sha256=sha, size=len(image))
    assert outcome(unsigned)["error"] == "unsigned firmware refused: this meter pins a " \
        "signing key"
    wrong_key = server.offer(device, fw_version="3.0.0", url=url, sha256=sha, size=len(image),
                             signature=sign_digest(other_key, sha))
    failed = outcome(wrong_key)
    assert failed["error"] == "bad signature: the image is not signed by the pinned key"
    tampered = server.offer(device, fw_version="3.0.0", url=f"{base}/evil.bin",
                            sha256=evil_sha, size=len(evil),
                            signature=sign_digest(release_key, sha))
    failed = outcome(tampered)
    assert failed["error"] == "bad signature: the image is not signed by the pinned key"
    assert controller.devices()[0].fw_version == "1.0.0"
    assert {r.message().boot for r in recorder.messages} <= {1, None}, "nothing installed"

    good = server.offer(device, fw_version="3.0.0", url=url, sha256=sha, size=len(image),
                        signature=sign_digest(release_key, sha))
    assert outcome(good)["state"] == "done"
    assert controller.devices()[0].fw_version == "3.0.0"
