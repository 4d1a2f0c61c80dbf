"""Envelope encryption of the tenants' provider keys (AES-256-GCM).

Each stored key gets a fresh random 256-bit data key. The data key encrypts the
provider key, bound to the tenant and the provider (associated data); the master key
(DISTILLERY_MASTER_KEY, base64 of 32 bytes) wraps the data key, bound to the tenant.
A blob copied to another tenant's row, or to another provider, does not open.

A sealed blob, all fields fixed-size but the last:

    version      1 byte   (1)
    master id    8 bytes  which master key wrapped it (a fingerprint, not the key):
                          the hook for rotating the master key later
    wrap nonce  12 bytes
    wrapped key 48 bytes  the data key and its GCM tag
    key nonce   12 bytes
    ciphertext   rest     the provider key and its GCM tag

The header (version and master id) is part of both associated data, so changing it
breaks the blob too. Errors never carry the master key, the data key or the plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common.errors import FailedPrecondition

VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MASTER_ID_BYTES = 8
_HEADER = 1 + MASTER_ID_BYTES
_WRAPPED = NONCE_BYTES + KEY_BYTES + TAG_BYTES
_MIN_BLOB = _HEADER + _WRAPPED + NONCE_BYTES + TAG_BYTES

MAKE_ONE = 'python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"'


class MasterKeyError(FailedPrecondition):
    """DISTILLERY_MASTER_KEY is missing or not base64 of 32 bytes (the value is never shown)."""


class SealedKeyError(FailedPrecondition):
    """A stored blob does not open: another tenant or provider, tampered, or another master key."""


class MasterKey:
    """The deployment's key-encryption key. Its repr shows only its id."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise MasterKeyError(f"the master key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        # A keyed fingerprint: names the key in each blob without telling anything about it.
        self.id = hmac.new(key, b"distillery master key id", hashlib.sha256).digest()[:MASTER_ID_BYTES]

    @classmethod
    def from_setting(cls, value: str) -> MasterKey:
        """The key from DISTILLERY_MASTER_KEY's text; MasterKeyError naming the fix when it is unusable."""
        value = value.strip()
        if not value:
            raise MasterKeyError(
                "DISTILLERY_MASTER_KEY is not set, so provider keys cannot be stored or read: the operator sets it "
                f"(environment or Kubernetes Secret) to base64 of 32 random bytes, e.g. `{MAKE_ONE}`"
            )
        try:  # standard or URL-safe alphabet, padding required, nothing else
            key = base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEY_BYTES:
            raise MasterKeyError(
                f"DISTILLERY_MASTER_KEY is not base64 of {KEY_BYTES} bytes: the operator sets it to base64 of 32 "
                f"random bytes, e.g. `{MAKE_ONE}`"
            )
        return cls(key)

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    def __repr__(self) -> str:
        return f"MasterKey(id={self.id_hex})"

    def wrap(self, data_key: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data_key, associated)

    def unwrap(self, wrapped: bytes, associated: bytes) -> bytes:
        return self._aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], associated)


def _data_aad(header: bytes, tenant_id: str, provider: str) -> bytes:
    return b"distillery/provider-key\0" + header + tenant_id.encode() + b"\0" + provider.encode()


def _wrap_aad(header: bytes, tenant_id: str) -> bytes:
    return b"distillery/data-key\0" + header + tenant_id.encode()


def seal(master: MasterKey, tenant_id: str, provider: str, plaintext: str) -> bytes:
    """``plaintext`` encrypted for this tenant and provider only."""
    header = bytes([VERSION]) + master.id
    data_key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext.encode(), _data_aad(header, tenant_id, provider))
    return header + master.wrap(data_key, _wrap_aad(header, tenant_id)) + nonce + ciphertext


def unseal(master: MasterKey, tenant_id: str, provider: str, blob: bytes) -> str:
    """The plaintext ``seal`` took, or SealedKeyError when the blob is not this tenant's and provider's."""
    if len(blob) < _MIN_BLOB or blob[0] != VERSION:
        raise SealedKeyError(
            f"the stored {provider} key is damaged: set it again with `distillery keys set {provider}`"
        )
    header, master_id = blob[:_HEADER], blob[1:_HEADER]
    if master_id != master.id:
        raise SealedKeyError(
            f"the stored {provider} key was encrypted under another master key (id {master_id.hex()}, this "
            f"service has {master.id_hex}): DISTILLERY_MASTER_KEY changed; set the key again with "
            f"`distillery keys set {provider}`"
        )
    wrapped = blob[_HEADER : _HEADER + _WRAPPED]
    nonce, ciphertext = (
        blob[_HEADER + _WRAPPED : _HEADER + _WRAPPED + NONCE_BYTES],
        blob[_HEADER + _WRAPPED + NONCE_BYTES :],
    )
    try:
        data_key = master.unwrap(wrapped, _wrap_aad(header, tenant_id))
        plaintext = AESGCM(data_key).decrypt(nonce, ciphertext, _data_aad(header, tenant_id, provider))
    except InvalidTag:
        raise SealedKeyError(
            f"the stored {provider} key does not open for this tenant (tampered or copied from elsewhere): "
            f"set it again with `distillery keys set {provider}`"
        ) from None
    return plaintext.decode()
