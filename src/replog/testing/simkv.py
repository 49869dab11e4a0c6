"""The simulator's state machine: a few integer registers with write and compare-and-set.

Theory of operation
-------------------
Clients put commands in the log as msgspec-JSON bytes (never pickle), each carrying a unique
command id. ``KvMachine.apply`` is deterministic: the same commands in the same order give the
same state and the same encoded image on every node. It remembers the outcome of every command
id it applied, which serves two ends: a command that reaches the log twice (a duplicated
forward) takes effect once, as client-session dedup would; and a client whose command was
applied inside a snapshot its node installed still learns the outcome.

The image (``snapshot_data``) holds the applied index, the registers and the outcomes, so a
node restored from it continues exactly where the image was taken. The number of outcomes is
bounded by the number of operations a simulated run issues.
"""

from __future__ import annotations

import hashlib

import msgspec

ABSENT = 0  # what a compare-and-set expects of a key never written; written values are >= 1


class Command(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A client command in the log. ``expect`` is set for a compare-and-set (``ABSENT``: the
    key must not exist)."""

    id: str
    op: str  # "write" | "cas"
    key: str
    value: int
    expect: int | None = None


class KvImage(msgspec.Struct, forbid_unknown_fields=True):
    applied_index: int
    values: dict[str, int]
    outcomes: dict[str, bool]


_command_encoder = msgspec.json.Encoder()
_command_decoder = msgspec.json.Decoder(Command)
_image_decoder = msgspec.json.Decoder(KvImage)


def encode_command(command: Command) -> bytes:
    return _command_encoder.encode(command)


def decode_command(data: bytes) -> Command | None:
    """The command in ``data``; None if it is not a well-formed command."""
    try:
        command = _command_decoder.decode(data)
    except msgspec.DecodeError:
        return None
    if command.op not in ("write", "cas") or (command.op == "cas") != (command.expect is not None):
        return None
    return command


class KvMachine:
    """Registers keyed by name; each command's outcome is remembered by command id."""

    def __init__(self) -> None:
        self.applied_index = 0
        self.values: dict[str, int] = {}
        self.outcomes: dict[str, bool] = {}

    def read(self, key: str) -> int | None:
        return self.values.get(key)

    def apply(self, index: int, command: Command) -> bool:
        """Apply ``command`` at ``index``; returns whether it took effect (a cas whose
        comparison failed did not). A command applied before keeps its first outcome."""
        assert index > self.applied_index, f"apply {index} after {self.applied_index}"
        self.applied_index = index
        known = self.outcomes.get(command.id)
        if known is not None:
            return known
        ok = command.op == "write" or self.values.get(command.key, ABSENT) == command.expect
        if ok:
            self.values[command.key] = command.value
        self.outcomes[command.id] = ok
        return ok

    def skip(self, index: int) -> None:
        """An index without client data (a no-op or a configuration entry)."""
        assert index > self.applied_index, f"skip {index} after {self.applied_index}"
        self.applied_index = index

    def snapshot_data(self) -> bytes:
        return msgspec.json.encode(KvImage(self.applied_index, self.values, self.outcomes))

    def restore(self, data: bytes) -> None:
        image = _image_decoder.decode(data)
        self.applied_index = image.applied_index
        self.values = image.values
        self.outcomes = image.outcomes


def image_digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()
