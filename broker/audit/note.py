"""C2SP signed notes and tlog checkpoints, Ed25519 (https://c2sp.org/signed-note, /tlog-checkpoint).

A note is text ending in a newline, a blank line, then one signature line per signer::

    <origin>
    <tree size>
    <base64 root hash>

    — <key name> <base64(key id ‖ Ed25519 signature)>

The key id is the first 4 bytes of SHA-256(name ‖ "\\n" ‖ 0x01 ‖ public key). A verifier key is written
``<name>+<hex key id>+<base64(0x01 ‖ public key)>`` and a signer key
``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ‖ seed)>``, as Go's ``golang.org/x/mod/sumdb/note``
writes them, so Go's verifiers (and any other C2SP one) read ours.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

ED25519 = 0x01
DASH = "\u2014"  # the em dash that opens a signature line


class NoteError(ValueError):
    """A note, key or checkpoint that is malformed or not signed as it claims."""


def _key_id(name: str, pub: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + pub).digest()[:4]


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name):
        raise NoteError(f"a key name is non-empty, without '+' or spaces: {name!r}")


@dataclass(frozen=True)
class Verifier:
    name: str
    key_id: bytes
    public: Ed25519PublicKey

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError("a verifier key is <name>+<hex id>+<base64 key>")
        name, hex_id, b64 = parts
        _check_name(name)
        try:
            key_id, raw = bytes.fromhex(hex_id), base64.b64decode(b64, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise NoteError(f"a verifier key's id or key does not decode: {exc}") from exc
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError("only Ed25519 verifier keys (type 0x01, 32 bytes) are read")
        if _key_id(name, raw[1:]) != key_id:
            raise NoteError("a verifier key's id does not match its name and key")
        return cls(name, key_id, Ed25519PublicKey.from_public_bytes(raw[1:]))

    def raw(self) -> bytes:
        return self.public.public_bytes(Encoding.Raw, PublicFormat.Raw)

    def text(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(bytes([ED25519]) + self.raw()).decode()}"

    def verifies(self, text: bytes, sig: bytes) -> bool:
        try:
            self.public.verify(sig, text)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Signer:
    name: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> Signer:
        _check_name(name)
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def parse(cls, skey: str) -> Signer:
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a signer key is PRIVATE+KEY+<name>+<hex id>+<base64 key>")
        name, _, b64 = parts[2:]
        _check_name(name)
        try:
            raw = base64.b64decode(b64, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise NoteError(f"a signer key does not decode: {exc}") from exc
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError("only Ed25519 signer keys (type 0x01, 32-byte seed) are read")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.verifier().key_id.hex() != parts[3]:
            raise NoteError("a signer key's id does not match its key")
        return signer

    def verifier(self) -> Verifier:
        pub = self.private.public_key()
        raw = pub.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return Verifier(self.name, _key_id(self.name, raw), pub)

    def text(self) -> str:
        seed = self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        kid = self.verifier().key_id.hex()
        return f"PRIVATE+KEY+{self.name}+{kid}+{base64.b64encode(bytes([ED25519]) + seed).decode()}"

    def signature_line(self, text: bytes) -> str:
        v = self.verifier()
        sig = self.private.sign(text)
        return f"{DASH} {self.name} {base64.b64encode(v.key_id + sig).decode()}\n"


def sign(text: str, *signers: Signer) -> str:
    """The signed note of ``text`` (which ends in a newline)."""
    if not text.endswith("\n") or "\n\n" in text:
        raise NoteError("a note's text ends in a newline and holds no blank line")
    body = text.encode()
    return text + "\n" + "".join(s.signature_line(body) for s in signers)


def open_note(note: str, verifier: Verifier) -> str:
    """The text of ``note`` if ``verifier`` signed it; :class:`NoteError` otherwise."""
    text, sep, sigs = note.rpartition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise NoteError("a signed note is text, a blank line, then signature lines")
    text += "\n"
    body = text.encode()
    for line in sigs.splitlines():
        prefix, _, rest = line.partition(" ")
        name, _, b64 = rest.partition(" ")
        if prefix != DASH or not name or not b64:
            raise NoteError(f"a malformed signature line: {line!r}")
        if name != verifier.name:
            continue
        try:
            raw = base64.b64decode(b64, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise NoteError(f"a signature does not decode: {exc}") from exc
        if raw[:4] == verifier.key_id and verifier.verifies(body, raw[4:]):
            return text
    raise NoteError(f"not signed by {verifier.name}+{verifier.key_id.hex()}")


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse_text(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint is origin, size and root hash, one a line")
        origin, size, root = lines[:3]
        if not origin or not size.isdigit() or (size != "0" and size.startswith("0")):
            raise NoteError("a checkpoint's origin is empty or its size is not a number")
        try:
            digest = base64.b64decode(root, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise NoteError(f"a checkpoint's root does not decode: {exc}") from exc
        if len(digest) != 32:
            raise NoteError("a checkpoint's root is not a SHA-256 hash")
        return cls(origin, int(size), digest)

    @classmethod
    def open(cls, note: str, verifier: Verifier, origin: str | None = None) -> Checkpoint:
        cp = cls.parse_text(open_note(note, verifier))
        if origin is not None and cp.origin != origin:
            raise NoteError(f"a checkpoint of {cp.origin!r}, not of {origin!r}")
        return cp
