"""The peer transport: Raft messages between nodes over TCP, framed msgpack, never pickle.

``PeerTransport`` (tcp.py) owns the connections, queues and handshake; ``encode_message`` /
``decode_message`` (codec.py) own the wire format; snapshots.py streams a large
InstallSnapshot in checksummed, resumable chunks; ``loopback_cluster`` starts a local cluster
of transports for tests.
"""

from replog.transport.codec import CodecError, decode_message, encode_message
from replog.transport.loopback import loopback_cluster
from replog.transport.tcp import PeerStats, PeerTransport

__all__ = [
    "CodecError",
    "PeerStats",
    "PeerTransport",
    "decode_message",
    "encode_message",
    "loopback_cluster",
]
