"""The peer transport: Raft messages between nodes over TCP, framed msgpack, never pickle."""

from replog.transport.codec import CodecError, decode_message, encode_message
from replog.transport.tcp import PeerStats, PeerTransport

__all__ = ["CodecError", "PeerStats", "PeerTransport", "decode_message", "encode_message"]
