"""Firmware signatures (Ed25519): what `iotmeter ota keygen` and `ota sign` make, what an
upload is checked against, and what a device verifies before it installs an image.

The signed message is a fixed tag followed by the image's SHA-256 digest, not the image
itself: a meter can hash the image as it streams to flash and check the signature at the end,
without holding up to 2 GiB in memory. The private key never needs to be on a server: signing
is an offline step on the release engineer's machine.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from iotmeter_tui.backend.errors import IotmeterError

# Bound into every signature so a firmware signature can never be replayed as something else.
SIGNED_TAG: Final = b"iotmeter-firmware-v1\x00sha256:"
SIGNATURE_BYTES: Final = 64
PUBLIC_KEY_BYTES: Final = 32
PRIVATE_KEY_FILE: Final = "firmware-signing.key"
PUBLIC_KEY_FILE: Final = "firmware-signing.pub"
SIGNATURE_SUFFIX: Final = ".sig"
_READ_CHUNK: Final = 1 << 20


class SigningError(IotmeterError):
    """A key or signature that cannot be used; `str()` is one line for the operator."""


def signed_message(sha256_hex: str) -> bytes:
    return SIGNED_TAG + bytes.fromhex(sha256_hex)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            while chunk := file.read(_READ_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise SigningError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    return digest.hexdigest()


# --- keys -----------------------------------------------------------------------------------

def generate_keypair(out_dir: Path) -> tuple[Path, Path, str]:
    """Write a new private key (PEM, 0600) and its public key (base64) into `out_dir`;
    refuse to overwrite either. Returns (private path, public path, public key base64)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise SigningError(f"cannot create {str(out_dir)!r}: {exc.strerror or exc}") from None
    private_path, public_path = out_dir / PRIVATE_KEY_FILE, out_dir / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise SigningError(f"{str(path)!r} already exists; keys are never overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    public = public_key_text(key.public_key())
    try:
        # Created 0600 from the first byte: never readable by anyone else, even briefly.
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        public_path.write_text(public + "\n", encoding="ascii")
    except OSError as exc:
        raise SigningError(f"cannot write the key files: {exc.strerror or exc}") from None
    return private_path, public_path, public


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read the key {str(path)!r}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SigningError(f"{str(path)!r} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{str(path)!r} is not an Ed25519 key (iotmeter ota keygen)")
    return key


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A public key given as base64 (32 raw bytes, what keygen prints) or as the path of a
    file holding that or a PEM public key. ValueError with a short reason otherwise."""
    text = text.strip()
    raw = _b64(text)
    if raw is None:
        path = Path(text).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"not a base64 Ed25519 key, nor a readable key file "
                             f"({exc.strerror or exc})") from None
        if data.lstrip().startswith(b"-----BEGIN"):
            try:
                key = serialization.load_pem_public_key(data)
            except ValueError:
                raise ValueError(f"{str(path)!r} holds no valid PEM public key") from None
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"{str(path)!r} is not an Ed25519 public key")
            return key
        raw = _b64(data.decode("ascii", "replace").strip())
        if raw is None:
            raise ValueError(f"{str(path)!r} holds no base64 Ed25519 public key")
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def configured_public_key(text: str | None) -> Ed25519PublicKey | None:
    """The key IOTMETER_FIRMWARE_PUBLIC_KEY names (already validated by the settings)."""
    if not text:
        return None
    try:
        return parse_public_key(text)
    except ValueError as exc:  # the key file changed since start-up
        raise SigningError(f"IOTMETER_FIRMWARE_PUBLIC_KEY: {exc}") from None


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True) if text else None
    except (binascii.Error, ValueError):
        return None


# --- signatures -----------------------------------------------------------------------------

def sign_digest(key: Ed25519PrivateKey, sha256_hex: str) -> str:
    """The base64 signature of an image with this digest."""
    return base64.b64encode(key.sign(signed_message(sha256_hex))).decode("ascii")


def sign_file(image: Path, key_path: Path) -> tuple[Path, str]:
    """Sign `image` with the private key at `key_path`; write IMAGE.sig (base64, one line).
    Returns (signature path, signature)."""
    key = load_private_key(key_path)
    signature = sign_digest(key, file_sha256(image))
    out = image.with_name(image.name + SIGNATURE_SUFFIX)
    try:
        out.write_text(signature + "\n", encoding="ascii")
    except OSError as exc:
        raise SigningError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    return out, signature


def read_signature_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII"
        raise SigningError(f"cannot read the signature {str(path)!r}: {reason}") from None
    if not is_signature(text):
        raise SigningError(f"{str(path)!r} holds no Ed25519 signature (iotmeter ota sign)")
    return text


def is_signature(text: object) -> bool:
    """Whether `text` is a base64 Ed25519 signature (64 bytes), as offers carry it."""
    if type(text) is not str or len(text) > 100:
        return False
    raw = _b64(text)
    return raw is not None and len(raw) == SIGNATURE_BYTES


def verify(key: Ed25519PublicKey, sha256_hex: str, signature: str) -> bool:
    """Whether `signature` (base64) signs the image with digest `sha256_hex` under `key`."""
    raw = _b64(signature)
    if raw is None or len(raw) != SIGNATURE_BYTES:
        return False
    try:
        key.verify(raw, signed_message(sha256_hex))
    except InvalidSignature:
        return False
    return True
