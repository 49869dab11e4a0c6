"""The wire codec: exact round trips for every message type, strict and total decoding."""

from __future__ import annotations

import contextlib
import dataclasses

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replog.core.types import (
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    Entry,
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
from replog.transport import CodecError, decode_message, encode_message
from replog.transport.codec import (
    Hello,
    Ping,
    Pong,
    _AppendEntries,
    _AppendEntriesResponse,
    decode_hello,
    decode_inbound,
    decode_pong,
    encode_control,
    message_size_bytes,
)

U63_MAX = (1 << 63) - 1
u63 = st.integers(min_value=0, max_value=U63_MAX)
small_bytes = st.binary(max_size=64)
node_ids = st.frozensets(u63, max_size=6)

entries = st.builds(Entry, index=u63, term=u63, kind=st.sampled_from(EntryKind), data=small_bytes)
configurations = st.builds(
    Configuration, voters=node_ids, voters_outgoing=node_ids, learners=node_ids
)
snapshots = st.builds(
    Snapshot,
    meta=st.builds(SnapshotMeta, index=u63, term=u63, config=configurations),
    data=small_bytes,
)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(RequestVote, u63, u63, u63, u63, u63, st.booleans(), st.booleans()),
    st.builds(RequestVoteResponse, u63, u63, u63, st.booleans(), st.booleans()),
    st.builds(
        AppendEntries, u63, u63, u63, u63, u63, st.lists(entries, max_size=5).map(tuple), u63
    ),
    st.builds(AppendEntriesResponse, u63, u63, u63, st.booleans(), u63, u63, u63, u63),
    st.builds(Heartbeat, u63, u63, u63, u63, u63),
    st.builds(HeartbeatResponse, u63, u63, u63, u63),
    st.builds(InstallSnapshot, u63, u63, u63, snapshots),
    st.builds(TimeoutNow, u63, u63, u63),
    st.builds(ForwardProposal, u63, u63, u63, st.lists(small_bytes, max_size=5).map(tuple)),
    st.builds(ReadIndexRequest, u63, u63, u63, small_bytes),
    st.builds(ReadIndexResponse, u63, u63, u63, small_bytes, u63),
)

MESSAGE_TYPES = (
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    TimeoutNow,
    ForwardProposal,
    ReadIndexRequest,
    ReadIndexResponse,
)


def _assert_same_types(a: object, b: object) -> None:
    """Equal is not enough: an IntEnum must come back as the enum, a frozenset as a frozenset."""
    assert type(a) is type(b)
    if dataclasses.is_dataclass(a):
        for field in dataclasses.fields(a):
            _assert_same_types(getattr(a, field.name), getattr(b, field.name))
    elif isinstance(a, tuple):
        assert isinstance(b, tuple)
        for x, y in zip(a, b, strict=True):
            _assert_same_types(x, y)


@settings(deadline=None)  # a busy machine may pause any example
@given(messages)
def test_every_message_round_trips_to_an_equal_value_of_the_same_types(m: Message) -> None:
    decoded = decode_message(encode_message(m))
    assert decoded == m
    _assert_same_types(decoded, m)


appends = st.builds(
    AppendEntries, u63, u63, u63, u63, u63, st.lists(entries, max_size=5).map(tuple), u63
)


@given(appends)
def test_append_entries_take_a_short_cut_to_the_bytes_of_their_schema(m: AppendEntries) -> None:
    wire = msgspec.convert(m, _AppendEntries, from_attributes=True)
    assert encode_message(m) == msgspec.msgpack.encode(wire)


responses = st.builds(AppendEntriesResponse, u63, u63, u63, st.booleans(), u63, u63, u63, u63)


@given(responses)
def test_append_responses_take_a_short_cut_to_the_bytes_of_their_schema(
    m: AppendEntriesResponse,
) -> None:
    wire = msgspec.convert(m, _AppendEntriesResponse, from_attributes=True)
    assert encode_message(m) == msgspec.msgpack.encode(wire)
    assert decode_message(encode_message(m)) == m


@pytest.mark.parametrize(
    "change", [{"term": -1}, {"match_index": U63_MAX + 1}, {"hint_term": 1.0}, {"success": 1}]
)
def test_append_responses_out_of_range_are_refused_on_the_way_out(
    change: dict[str, object],
) -> None:
    m = dataclasses.replace(AppendEntriesResponse(1, 2, 1, True, 3), **change)  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="AppendEntriesResponse"):
        encode_message(m)


@pytest.mark.parametrize(
    "change",
    [
        {"term": -1},
        {"leader_commit": U63_MAX + 1},
        {"prev_log_term": 2.0},
        {"entries": (Entry(1, -1),)},
        {"entries": (Entry(1, 1), Entry(U63_MAX + 1, 1))},
        {"prev_log_index": "7"},
    ],
)
def test_append_entries_out_of_range_are_refused_on_the_way_out(change: dict[str, object]) -> None:
    m = dataclasses.replace(AppendEntries(1, 1, 2, 0, 0, (), 0), **change)  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="AppendEntries"):
        encode_message(m)


def test_all_message_types_have_distinct_tags() -> None:
    seen: dict[int, type] = {}
    for cls in MESSAGE_TYPES:
        m = _example(cls)
        tag = msgspec.msgpack.decode(encode_message(m))[0]
        assert tag not in seen, (cls, seen.get(tag))
        seen[tag] = cls
    assert len(seen) == len(MESSAGE_TYPES)


def _example(cls: type) -> Message:
    values = {
        int: 7,
        bool: True,
        bytes: b"x",
        "tuple[Entry, ...]": (Entry(1, 1, EntryKind.NOOP), Entry(2, 1, EntryKind.NORMAL, b"a")),
        "tuple[bytes, ...]": (b"p", b"q"),
        "Snapshot": Snapshot(SnapshotMeta(3, 2, Configuration(frozenset({1, 2}))), b"img"),
    }
    kwargs = {}
    for field in dataclasses.fields(cls):
        key = {"int": int, "bool": bool, "bytes": bytes, "NodeId": int}.get(str(field.type))
        kwargs[field.name] = values[key if key is not None else str(field.type)]
    return cls(**kwargs)  # type: ignore[no-any-return]


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_example_of_each_type_round_trips(cls: type) -> None:
    m = _example(cls)
    assert decode_message(encode_message(m)) == m


def test_large_values_round_trip() -> None:
    m = AppendEntries(
        U63_MAX,
        U63_MAX,
        1,
        U63_MAX,
        0,
        tuple(Entry(i, 9, EntryKind.NORMAL, bytes(256)) for i in range(256)),
        U63_MAX,
    )
    assert decode_message(encode_message(m)) == m


# ---- strictness ------------------------------------------------------------------------------

HEARTBEAT = Heartbeat(term=3, sender=1, receiver=2, leader_commit=9, read_seq=4)
ENCODE = msgspec.msgpack.encode


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "empty"),
        (ENCODE([5, 3, 1, 2, 9, 4]) + b"\x00", "trailing bytes"),
        (ENCODE([5, 3, 1, 2, 9, 4, 0]), "an extra field"),
        (ENCODE([5, 3, 1, 2, 9]), "a missing field"),
        (ENCODE([5, -3, 1, 2, 9, 4]), "a negative term"),
        (ENCODE([5, 3, 1, 2, 9, 1 << 63]), "an int over 2**63-1"),
        (ENCODE([5, 3.0, 1, 2, 9, 4]), "a float"),
        (ENCODE([5, True, 1, 2, 9, 4]), "a bool for an int"),
        (ENCODE([1, 3, 1, 2, 9, 9, 1, 0]), "an int for a bool"),
        (ENCODE([99, 3, 1, 2]), "an unknown tag"),
        (ENCODE(["5", 3, 1, 2, 9, 4]), "a string tag"),
        (ENCODE({"term": 3}), "a map"),
        (ENCODE([3, 1, 1, 2, 0, 0, [[1, 1, 7, b""]], 0]), "an unknown entry kind"),
        (ENCODE([3, 1, 1, 2, 0, 0, [[1, 1, 0, "text"]], 0]), "str for bytes"),
        (ENCODE([3, 1, 1, 2, 0, 0, [[1, 1, 0]], 0]), "a short entry"),
        (ENCODE([65, 1]), "a ping is not a message"),
        (ENCODE([64, "replog-peer", 1, "c", 1, 2]), "a hello is not a message"),
        (b"\xc1", "a reserved msgpack byte"),
        (b"\xdd\xff\xff\xff\xff", "an array claiming 4G items"),
        (b"\x91" * 10_000, "deep nesting"),
    ],
)
def test_malformed_bodies_raise_codec_error(body: bytes, why: str) -> None:
    with pytest.raises(CodecError):
        decode_message(body)


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)


def test_encoding_refuses_what_decoding_would_refuse() -> None:
    with pytest.raises(CodecError, match="term"):
        encode_message(dataclasses.replace(HEARTBEAT, term=-1))
    with pytest.raises(CodecError, match="not a Raft message"):
        encode_message(Entry(1, 1))  # type: ignore[arg-type]


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_codec_error(data: bytes) -> None:
    for decode in (decode_message, decode_inbound, decode_hello, decode_pong):
        with contextlib.suppress(CodecError):
            decode(data)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    body = bytearray(encode_message(draw(messages)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(body) - 1)))
        if action == "flip" and body:
            body[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and body:
            body[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del body[at:]
        elif action == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete" and body:
            del body[at]
    return bytes(body)


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frames())
def test_mutated_frames_decode_to_a_message_or_raise_codec_error(body: bytes) -> None:
    try:
        m = decode_message(body)
    except CodecError:
        return
    assert type(m) in MESSAGE_TYPES
    assert decode_message(encode_message(m)) == m


@settings(deadline=None)  # a busy machine may pause any example
@given(messages)
def test_size_estimate_is_an_upper_bound(m: Message) -> None:
    assert message_size_bytes(m) >= len(encode_message(m))


# ---- control frames --------------------------------------------------------------------------


def test_control_frames_round_trip() -> None:
    hello = Hello("replog-peer", 1, "cluster-a", 1, 2)
    assert decode_hello(encode_control(hello)) == hello
    assert decode_pong(encode_control(Pong(5))) == Pong(5)
    assert decode_inbound(encode_control(Ping(6))) == Ping(6)
    assert decode_inbound(encode_message(HEARTBEAT)) == HEARTBEAT


def test_a_hello_from_a_later_version_with_more_fields_still_decodes() -> None:
    hello = decode_hello(ENCODE([64, "replog-peer", 2, "c", 1, 2, "a later field"]))
    assert hello.version == 2


@pytest.mark.parametrize(
    "body",
    [
        ENCODE([64, "replog-peer", 0, "c", 1, 2]),
        ENCODE([64, "replog-peer", 1, "c" * 300, 1, 2]),
        ENCODE([64, "replog-peer", 1, "c", -1, 2]),
        ENCODE([65, 1]),
        ENCODE([5, 3, 1, 2, 9, 4]),
    ],
)
def test_malformed_hellos_raise_codec_error(body: bytes) -> None:
    with pytest.raises(CodecError):
        decode_hello(body)


def test_pongs_are_not_inbound_frames() -> None:
    with pytest.raises(CodecError):
        decode_inbound(encode_control(Pong(1)))
    with pytest.raises(CodecError):
        decode_pong(encode_control(Ping(1)))
