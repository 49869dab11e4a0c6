"""The binary client protocol: framed msgspec messages over TCP, multiplexed and pipelined.

Theory of operation
-------------------
HTTP stays the API for people and curl (docs/http-api.md). This protocol is for programs that
send many requests: the Python ``RpcClient`` and ``replog bench --protocol rpc``. It carries the
same operations with the same meaning and the same error codes, without a text parser in the
way and with many requests in flight on one connection.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack (msgspec, strict:
never pickle). Every message is a tagged array; its first element names its kind.

* The client opens with ``Hello`` (protocol version, expected cluster id, or "" for any); the
  node answers ``Welcome`` (with the largest frame it accepts) or a ``Failure``
  (``version_mismatch``, ``cluster_mismatch``, ``invalid_request``) and closes.
* Then the client sends ``Write`` and ``Read`` requests, each with an id of its choosing (at
  least 1, unique among the requests it has in flight on that connection), as many as it
  likes without waiting. Id 0 is the connection's own: a ``Failure`` with id 0 (a refused
  handshake, a bad frame) answers no request and is followed by the close.
  The node answers each with exactly one ``Reply`` or ``Failure`` carrying the same id, in
  completion order (not request order). Answers that complete together leave in one write.
* A write that fails with ``unknown_outcome`` may or may not have applied, as over HTTP; a lost
  connection leaves every write in flight on it in that state too. ``unavailable`` means
  certainly not applied.
* The node bounds the requests in flight per connection (it stops reading until answers leave)
  and the frame size (a larger frame is answered with ``too_large`` and the connection closed).
* A frame that does not decode is answered with ``invalid_request`` (id 0) and the connection
  is closed: after a framing error the stream cannot be trusted.
* A node that stops stops reading, answers every request it read, then sends a ``Failure``
  with id 0 and code ``going_away`` and closes: every request the client has not had an
  answer to was never read, so it is certainly not applied and may go to another node. (With
  a write still awaiting its outcome the node cannot promise that; it closes without it.)
"""

from __future__ import annotations

import struct
from typing import Final

import msgspec

from replog.statemachines import (
    DeleteResult,
    GetResult,
    KeyValue,
    PutResult,
    Request,
    TxnResult,
)

VERSION: Final = 1
GOING_AWAY: Final = "going_away"  # the code of a node's farewell (see above)
LENGTH: Final = struct.Struct(">I")
FRAME_OVERHEAD_BYTES: Final = 64 * 1024  # room for ids, tags and keys around a request's payload

LINEARIZABLE: Final = "linearizable"
LEASE: Final = "lease"
STALE: Final = "stale"
CONSISTENCIES: Final = (LINEARIZABLE, LEASE, STALE)


class Hello(msgspec.Struct, tag=1, array_like=True, frozen=True):
    version: int
    cluster_id: str = ""  # "" accepts any cluster


class Welcome(msgspec.Struct, tag=2, array_like=True, frozen=True):
    version: int
    node_id: str
    cluster_id: str
    frame_bytes_max: int = 0  # a larger frame closes the connection; 0: not said


class Write(msgspec.Struct, tag=3, array_like=True, frozen=True):
    """A put, delete or transaction. The node stamps the request's time itself."""

    id: int
    request: Request


class GetKey(msgspec.Struct, tag=1, array_like=True, frozen=True):
    key: bytes


class RangePrefix(msgspec.Struct, tag=2, array_like=True, frozen=True):
    prefix: bytes
    limit: int


class Read(msgspec.Struct, tag=4, array_like=True, frozen=True):
    id: int
    query: GetKey | RangePrefix
    consistency: str = LINEARIZABLE
    min_revision: int = 0


class Header(msgspec.Struct, array_like=True, frozen=True):
    """The cluster header of docs/http-api.md (the node's id is in ``Welcome``)."""

    leader_id: str | None
    term: int
    commit_index: int
    applied_index: int
    revision: int


class RangeResult(msgspec.Struct, tag="range", frozen=True):
    kvs: tuple[KeyValue, ...]
    count: int
    more: bool


Result = PutResult | DeleteResult | TxnResult | GetResult | RangeResult


class Reply(msgspec.Struct, tag=5, array_like=True, frozen=True):
    id: int
    header: Header
    result: Result


class Failure(msgspec.Struct, tag=6, array_like=True, frozen=True):
    """``code`` is one of docs/http-api.md's error codes (``unavailable``, ``unknown_outcome``,
    ``invalid_request``, ``too_large``, ``idempotency_key_reused``, ...)."""

    id: int
    code: str
    message: str
    header: Header | None = None


ClientMessage = Hello | Write | Read
NodeMessage = Welcome | Reply | Failure


class FrameError(ValueError):
    """The byte stream is not a sequence of valid frames."""


class FrameReader:
    """Cuts a byte stream into frames of at most ``frame_bytes_max`` bytes."""

    def __init__(self, frame_bytes_max: int) -> None:
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytearray]:
        """Add ``data``; return the bodies of the frames it completed. Raises ``FrameError``
        as soon as a frame's length is over the limit."""
        buffer = self._buffer
        buffer += data
        frames: list[bytearray] = []
        offset, size = 0, len(buffer)
        while size - offset >= LENGTH.size:
            (length,) = LENGTH.unpack_from(buffer, offset)
            if length > self.frame_bytes_max:
                raise FrameError(f"a frame of {length} bytes is over {self.frame_bytes_max}")
            end = offset + LENGTH.size + length
            if end > size:
                break
            frames.append(buffer[offset + LENGTH.size : end])
            offset = end
        if offset:
            del buffer[:offset]
        return frames


def frame(body: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body


client_encoder = msgspec.msgpack.Encoder()
client_decoder: msgspec.msgpack.Decoder[NodeMessage] = msgspec.msgpack.Decoder(NodeMessage)
node_decoder: msgspec.msgpack.Decoder[ClientMessage] = msgspec.msgpack.Decoder(ClientMessage)
