"""The member registry: what every node knows about every member besides its id.

Theory of operation. The Raft core knows members by id only (``Configuration``). People and
peers need more: a member's name, its peer address (to send it Raft messages), its client URL
(to forward requests to the leader) and whether the leader should promote it from learner to
voter once it has caught up. ``Registry`` holds that, keyed by node id, and learns it from
four sources, all of which every node sees in the same order:

- the ``--initial-cluster`` of this node (names and peer addresses), at start;
- the *context* of each CONFIG entry (``ChangeContext``): the leader writes the registry of the
  new configuration into it, the changed member (``subject``) authoritative, so a node learns a
  new member's addresses as soon as the entry is in its log (which is also when the core starts
  using the new configuration: Raft thesis 4.1);
- *client records*: each node publishes its own client URL through the log once it is a member
  (etcd's "publish"), so every node can forward to every other;
- node snapshots: the registry travels in the snapshot next to the state machine's bytes
  (``wrap_snapshot``), so a node restored from a snapshot knows the members as of its index.

Invariants: at most ``MEMBERS_MAX`` entries (members of the configuration come first when the
registry must shed entries); a peer address this node was configured with is never replaced
by one learned from another node's view, except for the subject of a change (so per-node
views, like test proxies, stay intact). The registry never decides membership: the core's
configuration does; the registry only describes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import msgspec

from replog.server.config import node_id_of

MEMBERS_MAX = 256
SNAPSHOT_MAGIC = b"replog-node-snapshot/1\n"
CONTEXT_BYTES_MAX = 1 << 20


class MemberInfo(msgspec.Struct, frozen=True):
    """One member as the cluster describes it. ``client`` is "" while unknown; ``promote``:
    the leader promotes this member from learner to voter once it has caught up."""

    name: str
    peer: str
    client: str = ""
    promote: bool = True

    @property
    def node_id(self) -> int:
        return node_id_of(self.name)


class ChangeContext(msgspec.Struct, frozen=True):
    """The context of a CONFIG entry: the member it changes and the registry of the new
    configuration as the leader knows it."""

    subject: str
    members: tuple[MemberInfo, ...]


class ClientRecord(msgspec.Struct, frozen=True):
    """A member's own client URL, published through the log."""

    name: str
    client: str


class NodeSnapshot(msgspec.Struct, frozen=True):
    members: tuple[MemberInfo, ...]
    machine: bytes


_CONTEXT_DECODER = msgspec.json.Decoder(ChangeContext)
_RECORD_DECODER = msgspec.json.Decoder(ClientRecord)


class _NodeSnapshotView(msgspec.Struct, frozen=True):
    """``NodeSnapshot`` decoded without copying the machine's bytes."""

    members: tuple[MemberInfo, ...]
    machine: memoryview


_SNAPSHOT_VIEW_DECODER = msgspec.msgpack.Decoder(_NodeSnapshotView)


def encode_context(context: ChangeContext) -> bytes:
    return msgspec.json.encode(context)


def decode_context(data: bytes) -> ChangeContext | None:
    """The context of a CONFIG entry, or None when it carries none (or one of another kind)."""
    if not data or len(data) > CONTEXT_BYTES_MAX:
        return None
    try:
        return _CONTEXT_DECODER.decode(data)
    except msgspec.DecodeError:
        return None


def encode_record(record: ClientRecord) -> bytes:
    return msgspec.json.encode(record)


def decode_record(data: bytes) -> ClientRecord | None:
    try:
        return _RECORD_DECODER.decode(data)
    except msgspec.DecodeError:
        return None


def wrap_snapshot(members: Iterable[MemberInfo], machine: bytes) -> bytes:
    """A node snapshot: the registry and the state machine's snapshot bytes. The bytes of
    ``SNAPSHOT_MAGIC + msgspec.msgpack.encode(NodeSnapshot(...))``, put together by
    ``bytes.join``, which copies a large machine image without holding the GIL."""
    head = msgspec.msgpack.encode(NodeSnapshot(tuple(members), b""))
    assert head.endswith(_EMPTY_BIN), "machine is the last field"
    return b"".join((SNAPSHOT_MAGIC, head[: -len(_EMPTY_BIN)], _bin_header(len(machine)), machine))


_EMPTY_BIN: Final = b"\xc4\x00"


def _bin_header(length: int) -> bytes:
    """The msgpack header of ``length`` bytes of binary data (bin 8, bin 16, bin 32)."""
    if length < 1 << 8:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 1 << 16:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


def unwrap_snapshot(data: bytes) -> tuple[tuple[MemberInfo, ...], memoryview]:
    """(registry, machine bytes); a snapshot written without a registry is all machine. The
    machine bytes are a view into ``data``: copying a large image would hold the GIL."""
    if not data.startswith(SNAPSHOT_MAGIC):
        return (), memoryview(data)
    try:
        snapshot = _SNAPSHOT_VIEW_DECODER.decode(memoryview(data)[len(SNAPSHOT_MAGIC) :])
    except msgspec.DecodeError as error:
        raise ValueError(f"damaged node snapshot: {error}") from None
    return snapshot.members, snapshot.machine


class Registry:
    """Member descriptions by node id (see the module docstring)."""

    def __init__(self, initial: Mapping[str, str]) -> None:
        self._members: dict[int, MemberInfo] = {}
        self._configured: set[int] = set()  # ids whose peer address this node was given
        self.version = 0  # moves on every change, so readers can tell nothing changed
        for name, peer in initial.items():
            self._members[node_id_of(name)] = MemberInfo(name, peer)
            self._configured.add(node_id_of(name))

    def __len__(self) -> int:
        return len(self._members)

    def get(self, node_id: int) -> MemberInfo | None:
        return self._members.get(node_id)

    def name_of(self, node_id: int) -> str:
        info = self._members.get(node_id)
        return info.name if info is not None else str(node_id)

    def describe(self, node_ids: Iterable[int]) -> tuple[MemberInfo, ...]:
        """The known entries of ``node_ids``, sorted by name."""
        found = (self._members.get(i) for i in node_ids)
        return tuple(sorted((m for m in found if m is not None), key=lambda m: m.name))

    def all(self) -> tuple[MemberInfo, ...]:
        return tuple(sorted(self._members.values(), key=lambda m: m.name))

    def put(self, info: MemberInfo) -> None:
        """Record ``info`` as authoritative (the subject of a change this node proposes)."""
        self._members[info.node_id] = info
        self._shed(keep={info.node_id})
        self.version += 1

    def learn_change(self, context: ChangeContext) -> None:
        for info in context.members:
            known = self._members.get(info.node_id)
            if info.name == context.subject or known is None:
                self._members[info.node_id] = info
                continue
            peer = known.peer if info.node_id in self._configured else info.peer
            client = info.client or known.client
            self._members[info.node_id] = MemberInfo(info.name, peer, client, info.promote)
        self._shed(keep={m.node_id for m in context.members})
        self.version += 1

    def learn_snapshot(self, members: Iterable[MemberInfo]) -> None:
        listed = tuple(members)
        for info in listed:
            known = self._members.get(info.node_id)
            if known is not None and info.node_id in self._configured:
                info = MemberInfo(info.name, known.peer, info.client or known.client, info.promote)
            self._members[info.node_id] = info
        self._shed(keep={m.node_id for m in listed})
        self.version += 1

    def learn_record(self, record: ClientRecord) -> bool:
        """Record a member's published client URL; False when the member is unknown."""
        node_id = node_id_of(record.name)
        known = self._members.get(node_id)
        if known is None:
            return False
        self._members[node_id] = MemberInfo(known.name, known.peer, record.client, known.promote)
        self.version += 1
        return True

    def _shed(self, keep: set[int]) -> None:
        if len(self._members) <= MEMBERS_MAX:
            return
        for node_id in [i for i in self._members if i not in keep]:
            del self._members[node_id]
            if len(self._members) <= MEMBERS_MAX:
                return
