"""Signed firmware from the operator's shell to the meter: `ota keygen` and `ota sign` offline,
`ota upload --signature` checked against IOTMETER_FIRMWARE_PUBLIC_KEY, the signature carried in
the offer, and simulated meters that pin the key installing only what it signed."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.control import signing
from iotmeter_tui.backend.control.ota import OtaError, OtaService, RolloutDriver
from iotmeter_tui.backend.control.signing import (
    SigningError,
    generate_keypair,
    parse_public_key,
    sign_digest,
    sign_file,
)
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.factory import open_metadata
from iotmeter_tui.screens.ota import CampaignRequest, start_campaign
from testsupport import MosquittoServer
from testsupport.commands import (
    FakePublisher,
    register,
    run_cli,
    simulated_fleet,
    wait_online,
)
from testsupport.harness import StoreAudit, running_collector, settings_for

IMAGE = bytes(range(256)) * 256  # 64 KiB


# --- keys and signatures, offline -------------------------------------------------------------

def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    private, public_path, public = generate_keypair(tmp_path / "keys")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public_path.read_text().strip() == public
    assert len(base64.b64decode(public)) == 32
    assert signing.public_key_text(parse_public_key(public)) == public
    assert signing.public_key_text(parse_public_key(str(public_path))) == public
    with pytest.raises(SigningError, match="already exists"):
        generate_keypair(tmp_path / "keys")  # a key is never overwritten


def test_sign_writes_a_signature_that_verifies_and_nothing_else_does(tmp_path: Path) -> None:
    private, _, public = generate_keypair(tmp_path / "keys")
    image = tmp_path / "meter.bin"
    image.write_bytes(IMAGE)
    out, signature = sign_file(image, private)
    assert out == tmp_path / "meter.bin.sig" and out.read_text().strip() == signature
    key = parse_public_key(public)
    sha = signing.file_sha256(image)
    assert signing.verify(key, sha, signature)
    assert not signing.verify(key, "0" * 64, signature)  # another image
    other = Ed25519PrivateKey.generate()
    assert not signing.verify(key, sha, sign_digest(other, sha))  # another key
    assert not signing.verify(key, sha, "not base64")
    with pytest.raises(SigningError, match="not an unencrypted PEM private key"):
        sign_file(image, image)


def test_an_upload_must_verify_against_the_configured_key(tmp_path: Path) -> None:
    release, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    metadata = open_metadata(f"sqlite:///{tmp_path}/meta.db")
    archive = DirectoryArchive(tmp_path / "archive")
    ota = OtaService(metadata, archive, public_key=release.public_key())
    digest = hashlib.sha256(IMAGE).hexdigest()
    with pytest.raises(OtaError, match="must be signed"):
        ota.upload_bytes(IMAGE, "2.0.0")
    with pytest.raises(OtaError, match="does not verify"):
        ota.upload_bytes(IMAGE, "2.0.0", sign_digest(other, digest))
    with pytest.raises(OtaError, match="does not verify"):
        ota.upload_bytes(IMAGE[:-1] + b"\x01", "2.0.0", sign_digest(release, digest))
    with pytest.raises(OtaError, match="not a base64 Ed25519 signature"):
        ota.upload_bytes(IMAGE, "2.0.0", "c2lnbmF0dXJl")
    assert metadata.get_firmware("2.0.0") is None and list(archive.list()) == []

    good = sign_digest(release, digest)
    fw = ota.upload_bytes(IMAGE, "2.0.0", good)
    assert fw.signature == good and metadata.get_firmware("2.0.0") == fw

    # The signature reaches the device in the offer.
    register(metadata, "dc-1")
    broker = FakePublisher()
    ota.start_campaign("2.0.0", device_ids=["dc-1"])

    class Links:
        def url_for(self, fw: object, valid_s: int) -> str:
            return "http://fw.test/firmware/2.0.0"

    RolloutDriver(metadata, broker, Links()).advance()
    [offer] = broker.decoded()
    assert offer.body["signature"] == good
    metadata.close()


def test_an_offer_carries_only_a_well_formed_signature() -> None:
    sig = base64.b64encode(os.urandom(64)).decode()
    common = {"fw_version": "2.0.0", "url": "http://fw/x", "sha256": "a" * 64, "size": 1,
              "ts": 1, "expires_ts": 2}
    payload = protocol.encode_ota_offer("camp-1", **common, signature=sig)  # type: ignore[arg-type]
    decoded = protocol.decode_server_message("iot/dc-1/ota", payload)
    assert decoded is not None and decoded.body["signature"] == sig
    unsigned = protocol.encode_ota_offer("camp-1", **common)  # type: ignore[arg-type]
    assert b"signature" not in unsigned
    for bad in ("", "abc", sig[:-2], sig + "AAAA", 5):
        with pytest.raises(ValueError, match="signature="):
            protocol.encode_ota_offer("camp-1", **common, signature=bad)  # type: ignore[arg-type]


# --- the operator's workflow, end to end ------------------------------------------------------

def test_keygen_sign_upload_and_a_pinned_fleet_installs_it(
        tmp_path: Path, private_mosquitto: MosquittoServer) -> None:
    url = private_mosquitto.url
    plain = settings_for(tmp_path / "offline", {})
    keygen = run_cli(plain, url, "ota", "keygen", "--out", str(tmp_path / "keys"))
    assert keygen.returncode == 0, keygen.stderr
    public = keygen.stdout.strip().splitlines()[-1]
    private = tmp_path / "keys" / "firmware-signing.key"
    assert "BEGIN" not in keygen.stdout + keygen.stderr  # the private key is never printed
    image = tmp_path / "meter-2.0.0.bin"
    image.write_bytes(IMAGE)
    signed = run_cli(plain, url, "ota", "sign", str(image), "--key", str(private))
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.strip() == f"{image}.sig"

    settings = settings_for(tmp_path / "home", {"IOTMETER_FIRMWARE_PUBLIC_KEY": public})
    unsigned = run_cli(settings, url, "ota", "upload", str(image), "--version", "2.0.0")
    assert unsigned.returncode == 1
    assert unsigned.stderr.strip().startswith("iotmeter: firmware must be signed")
    forged = tmp_path / "forged.sig"
    forged.write_text(sign_digest(Ed25519PrivateKey.generate(),
                                  signing.file_sha256(image)))
    refused = run_cli(settings, url, "ota", "upload", str(image), "--version", "2.0.0",
                      "--signature", str(forged))
    assert refused.returncode == 1 and "does not verify" in refused.stderr
    upload = run_cli(settings, url, "ota", "upload", str(image), "--version", "2.0.0",
                     "--signature", f"{image}.sig")
    assert upload.returncode == 0, upload.stderr
    assert upload.stdout.strip().endswith(", signed")

    with running_collector(settings, url), \
            simulated_fleet(url, tmp_path / "sim", 3,
                            firmware_key=parse_public_key(public)) as (sim, ids):
        audit = StoreAudit(settings)
        metadata = audit.stores.metadata
        wait_online(metadata, ids)
        ota = OtaService(metadata, audit.stores.archive)
        campaign = ota.start_campaign("2.0.0", all_devices=True, batch_size=3)
        status = ota.wait(campaign.id, timeout_s=60)
        assert status.campaign.state == "completed", status
        assert {d.fw_version for d in sim.devices()} == {"2.0.0"}

        # An image stored unsigned behind the upload check (a compromised store): the
        # pinned meters refuse it and report why; nothing is installed.
        OtaService(metadata, audit.stores.archive).upload_bytes(IMAGE[::-1], "2.0.1")
        campaign = ota.start_campaign("2.0.1", all_devices=True, batch_size=3,
                                      max_failures_pct=100)
        status = ota.wait(campaign.id, timeout_s=60)
        assert status.campaign.state == "failed", status
        assert {t.state for t in status.targets} == {"failed"}
        assert all(t.error == "unsigned firmware refused: this meter pins a signing key"
                   for t in status.targets)
        assert {d.fw_version for d in sim.devices()} == {"2.0.0"}
        audit.close()


def test_the_dashboard_takes_the_signature_beside_the_image(tmp_path: Path) -> None:
    release = Ed25519PrivateKey.generate()
    metadata = open_metadata(f"sqlite:///{tmp_path}/meta.db")
    register(metadata, "dc-1")
    ota = OtaService(metadata, DirectoryArchive(tmp_path / "archive"),
                     public_key=release.public_key())
    image = tmp_path / "meter.bin"
    image.write_bytes(IMAGE)

    def request(version: str) -> CampaignRequest:
        return CampaignRequest(image, version, ["dc-1"], None, False, 1, 20.0)

    with pytest.raises(OtaError, match="must be signed"):
        start_campaign(ota, request("2.0.0"))  # no meter.bin.sig yet
    Path(f"{image}.sig").write_text(sign_digest(release, hashlib.sha256(IMAGE).hexdigest()))
    start_campaign(ota, request("2.0.0"))
    fw = metadata.get_firmware("2.0.0")
    assert fw is not None and fw.signature is not None
    metadata.close()
