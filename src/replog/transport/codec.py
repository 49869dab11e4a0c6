"""The peer wire format: Raft messages and connection control frames as msgpack (msgspec).

Theory of operation. The core's messages are frozen dataclasses and stay free of msgspec; this
module mirrors each one as a frozen, array-like msgspec Struct whose first element is an integer
tag, so a body is a msgpack array ``[tag, field, field, ...]`` in the dataclass's field order
(nested values too: an ``Entry`` is ``[index, term, kind, data]``, a ``Configuration`` is three
arrays of node ids). Enums travel as ints, frozensets as arrays, bytes as msgpack bin. Never
pickle.

Invariants:

* Explicit tags: a tag names one message type forever; a new type gets a new tag, a changed
  layout gets a new wire version (the handshake carries it, see ``tcp.py``).
* Round trip: ``decode_message(encode_message(m)) == m`` for every message the core can build.
* Strict and total decoding: any byte string that is not exactly one well-formed message
  raises ``CodecError`` (a ``ValueError``) and nothing else. Every field is required, no extra
  fields, no trailing bytes, ints are in 0 .. 2**63-1, bools are bools, enums are known
  values, and every string or sequence has a bounded length.
* Encoding goes through the same schemas, so a message with a value the receiver would
  refuse (a negative term, say) fails at the sender with ``CodecError`` instead.

Snapshot transfer frames (tags 67..69, see ``snapshots.py``): a ``SnapshotHeader`` (the
InstallSnapshot's fields without the data, plus total size and CRC-32C of the data), then
``SnapshotChunk`` frames on the dialer's connection, answered by ``SnapshotAck`` frames on the
same connection, like pongs. They are control frames: a peer that does not know them closes
the connection as it does for any unknown frame, so the wire version stays 1.

Conversion between the dataclasses and the Structs is done by ``msgspec.convert`` with
``from_attributes=True`` in C, field by field by name, which is both the fastest way we
measured and the one that cannot get the field order wrong.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Sequence
from typing import Annotated, Any, Final, TypeAlias

import msgspec

from replog.core.types import (
    AppendEntries,
    AppendEntriesResponse,
    EntryKind,
    ForwardProposal,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
)

__all__ = [
    "ACK_DONE",
    "ACK_PROGRESS",
    "ACK_REFUSED",
    "FRAME_HEADER",
    "HELLO_BYTES_MAX",
    "MAGIC",
    "WIRE_VERSION",
    "CodecError",
    "Hello",
    "Ping",
    "Pong",
    "SnapshotAck",
    "SnapshotChunk",
    "SnapshotHeader",
    "decode_hello",
    "decode_inbound",
    "decode_message",
    "decode_pong",
    "decode_reply",
    "encode_chunk",
    "encode_control",
    "encode_message",
    "message_size_bytes",
    "snapshot_header",
    "snapshot_message",
]

MAGIC: Final = "replog-peer"
WIRE_VERSION: Final = 1
FRAME_HEADER: Final = struct.Struct(">I")  # every frame: 4-byte big-endian body length, body
HELLO_BYTES_MAX: Final = 1024  # a handshake body is tiny; a bigger first frame is not a peer
CLUSTER_ID_CHARS_MAX: Final = 256
SEQUENCE_ITEMS_MAX: Final = 1 << 20  # entries, proposals or node ids in one message

# Every integer on the wire: terms, indexes, node ids, sequence numbers.
U63: TypeAlias = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
U32: TypeAlias = Annotated[int, msgspec.Meta(ge=0, le=(1 << 32) - 1)]
NodeIds: TypeAlias = Annotated[frozenset[U63], msgspec.Meta(max_length=SEQUENCE_ITEMS_MAX)]


class CodecError(ValueError):
    """A body is not a well-formed message (or a message cannot be encoded)."""


class _Wire(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """Base of every wire schema: positional, immutable, no extra fields."""


# ---- nested values ---------------------------------------------------------------------------


class _Entry(_Wire, frozen=True):
    index: U63
    term: U63
    kind: EntryKind
    data: bytes


class _Configuration(_Wire, frozen=True):
    voters: NodeIds
    voters_outgoing: NodeIds
    learners: NodeIds


class _SnapshotMeta(_Wire, frozen=True):
    index: U63
    term: U63
    config: _Configuration


class _Snapshot(_Wire, frozen=True):
    meta: _SnapshotMeta
    data: bytes


# ---- Raft messages (tags 1..63) --------------------------------------------------------------


class _RequestVote(_Wire, frozen=True, tag=1):
    term: U63
    sender: U63
    receiver: U63
    last_log_index: U63
    last_log_term: U63
    pre_vote: bool
    transfer: bool


class _RequestVoteResponse(_Wire, frozen=True, tag=2):
    term: U63
    sender: U63
    receiver: U63
    granted: bool
    pre_vote: bool


class _AppendEntries(_Wire, frozen=True, tag=3):
    term: U63
    sender: U63
    receiver: U63
    prev_log_index: U63
    prev_log_term: U63
    entries: Annotated[tuple[_Entry, ...], msgspec.Meta(max_length=SEQUENCE_ITEMS_MAX)]
    leader_commit: U63


class _AppendEntriesResponse(_Wire, frozen=True, tag=4):
    term: U63
    sender: U63
    receiver: U63
    success: bool
    match_index: U63
    reject_index: U63
    hint_index: U63
    hint_term: U63


class _Heartbeat(_Wire, frozen=True, tag=5):
    term: U63
    sender: U63
    receiver: U63
    leader_commit: U63
    read_seq: U63


class _HeartbeatResponse(_Wire, frozen=True, tag=6):
    term: U63
    sender: U63
    receiver: U63
    read_seq: U63


class _InstallSnapshot(_Wire, frozen=True, tag=7):
    term: U63
    sender: U63
    receiver: U63
    snapshot: _Snapshot


class _TimeoutNow(_Wire, frozen=True, tag=8):
    term: U63
    sender: U63
    receiver: U63


class _ForwardProposal(_Wire, frozen=True, tag=9):
    term: U63
    sender: U63
    receiver: U63
    data: Annotated[tuple[bytes, ...], msgspec.Meta(max_length=SEQUENCE_ITEMS_MAX)]


class _ReadIndexRequest(_Wire, frozen=True, tag=10):
    term: U63
    sender: U63
    receiver: U63
    context: bytes


class _ReadIndexResponse(_Wire, frozen=True, tag=11):
    term: U63
    sender: U63
    receiver: U63
    context: bytes
    index: U63


# ---- connection control frames (tags 64..) ---------------------------------------------------


class Hello(msgspec.Struct, array_like=True, frozen=True, tag=64):
    """The first frame on every connection, from the dialing node.

    Not ``forbid_unknown_fields``: a later wire version may append fields, and the receiver
    must still read ``version`` to refuse it by name rather than call it garbage.
    """

    magic: Annotated[str, msgspec.Meta(max_length=64)]
    version: Annotated[int, msgspec.Meta(ge=1, le=(1 << 31) - 1)]
    cluster_id: Annotated[str, msgspec.Meta(max_length=CLUSTER_ID_CHARS_MAX)]
    sender: U63
    receiver: U63


class Ping(_Wire, frozen=True, tag=65):
    """Sender -> receiver on an outbound connection; answered by a Pong with the same seq."""

    seq: U63


class Pong(_Wire, frozen=True, tag=66):
    """Receiver -> sender: the only frame ever written back on an inbound connection."""

    seq: U63


class SnapshotHeader(_Wire, frozen=True, tag=67):
    """Dialer -> receiver: a chunked InstallSnapshot begins (or resumes) as ``attempt``.

    ``attempt`` numbers the headers a sender sent to this receiver; acks and chunks name it.
    The snapshot is identified by (``meta.index``, ``meta.term``, ``total_bytes``, ``crc``).
    """

    attempt: U63
    term: U63
    sender: U63
    receiver: U63
    meta: _SnapshotMeta
    total_bytes: U63
    crc: U32  # CRC-32C of the whole snapshot data


class SnapshotChunk(_Wire, frozen=True, tag=68):
    """Dialer -> receiver: ``data`` at ``offset`` of the snapshot of header ``attempt``."""

    attempt: U63
    offset: U63
    crc: U32  # CRC-32C of data
    data: bytes


ACK_PROGRESS: Final = 0  # the receiver holds ``offset`` bytes of the snapshot
ACK_DONE: Final = 1  # the whole snapshot was verified and delivered
ACK_REFUSED: Final = 2  # the transfer was discarded (damage, CRC mismatch, over the bound)


class SnapshotAck(_Wire, frozen=True, tag=69):
    """Receiver -> dialer, on the connection the header or chunk came on."""

    attempt: U63
    offset: U63
    status: Annotated[int, msgspec.Meta(ge=ACK_PROGRESS, le=ACK_REFUSED)]


_PAIRS: Final[tuple[tuple[type[Any], type[_Wire]], ...]] = (
    (RequestVote, _RequestVote),
    (RequestVoteResponse, _RequestVoteResponse),
    (AppendEntries, _AppendEntries),
    (AppendEntriesResponse, _AppendEntriesResponse),
    (Heartbeat, _Heartbeat),
    (HeartbeatResponse, _HeartbeatResponse),
    (InstallSnapshot, _InstallSnapshot),
    (TimeoutNow, _TimeoutNow),
    (ForwardProposal, _ForwardProposal),
    (ReadIndexRequest, _ReadIndexRequest),
    (ReadIndexResponse, _ReadIndexResponse),
)
_WIRE_OF: Final[dict[type[Any], type[_Wire]]] = dict(_PAIRS)
_MESSAGE_OF: Final[dict[type[_Wire], type[Any]]] = {wire: cls for cls, wire in _PAIRS}
_WIRE_TYPES: Final = tuple(wire for _, wire in _PAIRS)

_ENCODER: Final = msgspec.msgpack.Encoder()


def _union_decoder(types: tuple[type[msgspec.Struct], ...]) -> msgspec.msgpack.Decoder[Any]:
    union: Any = types[0]
    for wire in types[1:]:
        union = union | wire
    return msgspec.msgpack.Decoder(union)


_MESSAGE_DECODER: Final = _union_decoder(_WIRE_TYPES)
_INBOUND_DECODER: Final = _union_decoder((*_WIRE_TYPES, Ping, SnapshotHeader, SnapshotChunk))
_HELLO_DECODER: Final = msgspec.msgpack.Decoder(Hello)
_PONG_DECODER: Final = msgspec.msgpack.Decoder(Pong)
_REPLY_DECODER: Final = _union_decoder((Pong, SnapshotAck))
_HEADER_DECODER: Final = msgspec.msgpack.Decoder(SnapshotHeader)

_DECODE_ERRORS: Final = (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError)


def encode_message(m: Message) -> bytes:
    """The body of one message (no length prefix). Raises CodecError on a value out of range."""
    if type(m) is AppendEntries:
        return _encode_append(m)
    if type(m) is AppendEntriesResponse:
        return _encode_append_response(m)
    try:
        wire = msgspec.convert(m, _WIRE_OF[type(m)], from_attributes=True)
    except KeyError:
        raise CodecError(f"not a Raft message: {type(m).__name__}") from None
    except msgspec.ValidationError as error:
        raise CodecError(f"cannot encode {type(m).__name__}: {error}") from None
    return _ENCODER.encode(wire)


_U63_MAX: Final = (1 << 63) - 1
_APPEND_TAG: Final = _AppendEntries.__struct_config__.tag
_APPEND_RESPONSE_TAG: Final = _AppendEntriesResponse.__struct_config__.tag


def _all_u63(ints: Sequence[int]) -> bool:
    """Whether every value is an int that the schema's ``U63`` accepts (the short cuts'
    check: a message built by hand may hold anything). A plain loop: a third of the time of
    ``all`` over a generator, for these few values."""
    for value in ints:  # noqa: SIM110 (the loop is the point: see above)
        if type(value) is not int or value < 0 or value > _U63_MAX:
            return False
    return True


def _encode_append(m: AppendEntries) -> bytes:
    """AppendEntries, nearly all of the traffic, encoded from plain tuples: the same bytes as
    through ``_AppendEntries`` in half the time (building a wire struct per entry cost more
    than the encoding). The ranges the schema checks are checked on the header and on the
    first and last entries (a leader's entries have consecutive indexes and rising terms)."""
    entries = m.entries
    ints = [m.term, m.sender, m.receiver, m.prev_log_index, m.prev_log_term, m.leader_commit]
    if entries:
        first, last = entries[0], entries[-1]
        ints += (first.index, first.term, last.index, last.term)
    if not _all_u63(ints) or len(entries) > SEQUENCE_ITEMS_MAX:
        raise CodecError(f"cannot encode AppendEntries: a value is out of range in {m!r}")
    body = [(e.index, e.term, e.kind, e.data) for e in entries]
    header = (_APPEND_TAG, m.term, m.sender, m.receiver, m.prev_log_index, m.prev_log_term)
    return _ENCODER.encode((*header, body, m.leader_commit))


def _encode_append_response(m: AppendEntriesResponse) -> bytes:
    """The answer to every append, encoded from a tuple like ``_encode_append``."""
    ints = (m.term, m.sender, m.receiver, m.match_index, m.reject_index, m.hint_index, m.hint_term)
    if not _all_u63(ints) or type(m.success) is not bool:
        raise CodecError(f"cannot encode AppendEntriesResponse: a value is out of range in {m!r}")
    return _ENCODER.encode(
        (_APPEND_RESPONSE_TAG, m.term, m.sender, m.receiver, m.success, *ints[3:])
    )


def encode_control(frame: Hello | Ping | Pong | SnapshotHeader | SnapshotAck) -> bytes:
    """The body of one control frame (no length prefix)."""
    return _ENCODER.encode(frame)


def encode_chunk(attempt: int, offset: int, crc: int, data: memoryview) -> bytes:
    """The body of a ``SnapshotChunk`` straight from a slice of the snapshot (no copy of it
    beyond the body itself): the same msgpack array a SnapshotChunk struct encodes to."""
    tag = SnapshotChunk.__struct_config__.tag
    return _ENCODER.encode((tag, attempt, offset, crc, data))


def snapshot_header(m: InstallSnapshot, attempt: int, total_bytes: int, crc: int) -> SnapshotHeader:
    """The header frame announcing ``m`` (without its data); CodecError when a value is out of
    range, checked through the same schema the receiver decodes with."""
    try:
        meta = msgspec.convert(m.snapshot.meta, _SnapshotMeta, from_attributes=True)
        header = SnapshotHeader(attempt, m.term, m.sender, m.receiver, meta, total_bytes, crc)
        checked: SnapshotHeader = _HEADER_DECODER.decode(_ENCODER.encode(header))
    except _DECODE_ERRORS as error:
        raise CodecError(f"cannot encode a snapshot header: {error}") from None
    return checked


def snapshot_message(header: SnapshotHeader, data: bytes) -> InstallSnapshot:
    """The InstallSnapshot a header announced, with its assembled data."""
    meta = msgspec.convert(header.meta, SnapshotMeta, from_attributes=True)
    return InstallSnapshot(header.term, header.sender, header.receiver, Snapshot(meta, data))


def _to_message(wire: Any) -> Message:
    result: Message = msgspec.convert(wire, _MESSAGE_OF[type(wire)], from_attributes=True)
    return result


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Exactly one message from a body; any other input raises CodecError."""
    try:
        return _to_message(_MESSAGE_DECODER.decode(data))
    except _DECODE_ERRORS as error:
        raise CodecError(f"malformed message: {error}") from None


InboundFrame: TypeAlias = Message | Ping | SnapshotHeader | SnapshotChunk


def decode_inbound(data: bytes | bytearray | memoryview) -> InboundFrame:
    """A frame on an inbound connection after the handshake: a message, a Ping, or a
    snapshot header or chunk."""
    try:
        wire = _INBOUND_DECODER.decode(data)
        if type(wire) is Ping or type(wire) is SnapshotHeader or type(wire) is SnapshotChunk:
            return wire
        return _to_message(wire)
    except _DECODE_ERRORS as error:
        raise CodecError(f"malformed frame: {error}") from None


def decode_hello(data: bytes | bytearray | memoryview) -> Hello:
    try:
        return _HELLO_DECODER.decode(data)
    except _DECODE_ERRORS as error:
        raise CodecError(f"malformed handshake: {error}") from None


def decode_pong(data: bytes | bytearray | memoryview) -> Pong:
    try:
        return _PONG_DECODER.decode(data)
    except _DECODE_ERRORS as error:
        raise CodecError(f"malformed pong: {error}") from None


def decode_reply(data: bytes | bytearray | memoryview) -> Pong | SnapshotAck:
    """A frame written back on an outbound connection: a Pong or a SnapshotAck."""
    try:
        reply: Pong | SnapshotAck = _REPLY_DECODER.decode(data)
    except _DECODE_ERRORS as error:
        raise CodecError(f"malformed reply: {error}") from None
    return reply


_FIXED_BYTES: Final = 96  # tag, ints and bools of any message, generously
_ENTRY_FIXED_BYTES: Final = 32  # an entry's array header, index, term, kind, bin header
_DATA: Final = operator.attrgetter("data")


def message_size_bytes(m: Message) -> int:
    """A cheap upper bound of the encoded body size, for queue byte budgets."""
    if type(m) is AppendEntries:
        entries = m.entries
        return _FIXED_BYTES + _ENTRY_FIXED_BYTES * len(entries) + sum(map(len, map(_DATA, entries)))
    if type(m) is InstallSnapshot:
        config = m.snapshot.meta.config
        nodes = len(config.voters) + len(config.voters_outgoing) + len(config.learners)
        return _FIXED_BYTES + len(m.snapshot.data) + 9 * nodes + 32
    if type(m) is ForwardProposal:
        return _FIXED_BYTES + 5 * len(m.data) + sum(map(len, m.data))
    if type(m) is ReadIndexRequest or type(m) is ReadIndexResponse:
        return _FIXED_BYTES + len(m.context)
    return _FIXED_BYTES
