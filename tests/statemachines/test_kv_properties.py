"""Properties of the KV store, with hypothesis.

1. Random requests give the same results as a plain dict-based reference model written here
   from docs/http-api.md (revisions, versions, txns, idempotency, the watch history).
2. A snapshot taken at any point and restored gives identical future results and bytes.
3. ``decode_request`` (and so ``apply``) raises nothing but ``InvalidCommand`` on any bytes.
4. ``txn_from_json`` raises nothing but ``InvalidCommand`` on any JSON-like value.
"""

from __future__ import annotations

import base64
import contextlib
from dataclasses import dataclass, field

import msgspec
from hypothesis import event, given, settings
from hypothesis import strategies as st

from replog.statemachines import (
    ApplyResult,
    Compacted,
    Compare,
    Delete,
    DeleteResult,
    ErrorResult,
    Event,
    Get,
    GetResult,
    InvalidCommand,
    KeyValue,
    KVLimits,
    KVStore,
    Put,
    PutResult,
    Request,
    Txn,
    TxnResult,
    commands,
    decode_request,
    encode_request,
    txn_from_json,
)
from replog.statemachines.commands import TxnOp, WriteOp, WriteResult

PROPERTY = settings(max_examples=150, derandomize=True, deadline=None)
LIMITS = KVLimits(
    idempotency_keys_max=3, idempotency_ttl_ms=1000, history_events_max=3, range_limit_max=50
)

# --- the reference model --------------------------------------------------------------------


@dataclass
class Model:
    """The store as docs/http-api.md describes it, written as plainly as possible."""

    limits: KVLimits
    data: dict[bytes, KeyValue] = field(default_factory=dict)
    revision: int = 0
    now_ms: int = 0
    remembered: dict[str, tuple[WriteOp, int, WriteResult]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)  # all of them, never dropped

    def apply(self, req: Request) -> ApplyResult:
        self.now_ms = max(self.now_ms, req.time_ms)
        ttl_ms = self.limits.idempotency_ttl_ms
        self.remembered = {
            k: entry for k, entry in self.remembered.items() if entry[1] + ttl_ms > self.now_ms
        }
        key = req.idempotency_key
        if key is not None and key in self.remembered:
            op, _, result = self.remembered[key]
            if op == req.op:
                return result
            return ErrorResult("idempotency_key_reused", "")
        result = self.execute(req.op)
        if key is not None:
            self.remembered[key] = (req.op, self.now_ms, result)
            while len(self.remembered) > self.limits.idempotency_keys_max:
                del self.remembered[next(iter(self.remembered))]
        return result

    def execute(self, op: WriteOp) -> WriteResult:
        if isinstance(op, Txn):
            return self.txn(op)
        result = self.txn(Txn((), (op,), ())).responses[0]
        assert isinstance(result, PutResult | DeleteResult)
        return result

    def txn(self, txn: Txn) -> TxnResult:
        succeeded = all(self.holds(c) for c in txn.compare)
        next_revision = self.revision + 1
        wrote = False
        raw: list[tuple[TxnOp, KeyValue | None, KeyValue | None]] = []
        for op in txn.success if succeeded else txn.failure:
            prev = self.data.get(op.key)
            if isinstance(op, Put):
                wrote = True
                create = next_revision if prev is None else prev.create_revision
                version = 1 if prev is None else prev.version + 1
                kv = KeyValue(op.key, op.value, create, next_revision, version)
                self.data[op.key] = kv
                self.events.append(Event("put", kv))
                raw.append((op, kv, prev))
            elif isinstance(op, Delete):
                if prev is not None:
                    wrote = True
                    del self.data[op.key]
                    self.events.append(Event("delete", KeyValue(op.key, b"", 0, next_revision, 0)))
                raw.append((op, None, prev))
            else:
                raw.append((op, prev, None))
        if wrote:
            self.revision = next_revision
        return TxnResult(self.revision, succeeded, tuple(self.response(r) for r in raw))

    def response(
        self, item: tuple[TxnOp, KeyValue | None, KeyValue | None]
    ) -> PutResult | DeleteResult | GetResult:
        op, kv, prev = item
        if isinstance(op, Put):
            assert kv is not None
            return PutResult(self.revision, kv, prev)
        if isinstance(op, Delete):
            return DeleteResult(self.revision, int(prev is not None), prev)
        return GetResult(kv)

    def holds(self, c: Compare) -> bool:
        kv = self.data.get(c.key)
        if c.target == "value":
            if kv is None:
                return False
            actual: bytes | int = kv.value
        else:
            actual = 0 if kv is None else getattr(kv, c.target)
        return {
            "==": actual == c.value,
            "!=": actual != c.value,
            "<": actual < c.value,  # type: ignore[operator]
            ">": actual > c.value,  # type: ignore[operator]
        }[c.op]

    def window(self) -> tuple[int, list[Event]]:
        """The compact revision and the events a history of history_events_max holds: whole
        revisions, newest first, the newest one even if it alone is over the budget."""
        kept = self.events
        while len(kept) > self.limits.history_events_max:
            oldest = kept[0].kv.mod_revision
            if oldest == self.revision:
                break  # the newest revision is always kept whole
            kept = [e for e in kept if e.kv.mod_revision > oldest]
        return (kept[0].kv.mod_revision if kept else self.revision + 1), kept


# --- strategies -----------------------------------------------------------------------------

KEYS = st.sampled_from([b"a", b"ab", b"b", b"b\x00", b"b\xff", b"\xff"])
VALUES = st.binary(max_size=2)
INT_TARGETS = st.sampled_from(["version", "mod_revision", "create_revision"])
OPS = st.sampled_from(["==", "!=", "<", ">"])
COMPARES = st.one_of(
    st.builds(Compare, KEYS, st.just("value"), OPS, VALUES),
    st.builds(Compare, KEYS, INT_TARGETS, OPS, st.integers(-1, 12)),
)
PUTS = st.builds(Put, KEYS, VALUES)
DELETES = st.builds(Delete, KEYS)
TXN_OPS = st.one_of(PUTS, DELETES, st.builds(Get, KEYS))
TXNS = st.builds(
    Txn,
    st.lists(COMPARES, max_size=2).map(tuple),
    st.lists(TXN_OPS, max_size=4).map(tuple),
    st.lists(TXN_OPS, max_size=3).map(tuple),
)
FRESH_REQUESTS = st.builds(
    Request,
    st.one_of(PUTS, DELETES, TXNS),
    st.one_of(st.none(), st.sampled_from(["i1", "i2", "i3", "i4"])),
    st.integers(0, 12).map(lambda t: t * 250),  # coarse, to hit the ttl boundary exactly
)


@st.composite
def request_lists(draw: st.DrawFn, max_size: int) -> list[Request]:
    """Requests where some are retries of earlier ones (same op and key, later time)."""
    requests: list[Request] = []
    for _ in range(draw(st.integers(0, max_size))):
        if requests and draw(st.integers(0, 3)) == 0:
            earlier = draw(st.sampled_from(requests))
            later_ms = earlier.time_ms + draw(st.sampled_from([0, 250, 750, 1000, 1250]))
            requests.append(msgspec.structs.replace(earlier, time_ms=later_ms))
        else:
            requests.append(draw(FRESH_REQUESTS))
    return requests


REQUESTS = FRESH_REQUESTS


def check_reads(store: KVStore, model: Model) -> None:
    assert store.revision == model.revision
    assert store.now_ms == model.now_ms
    expected = sorted(model.data.items())
    for prefix in (b"", b"a", b"b", b"b\xff", b"\xff", b"c"):
        matching = [kv for key, kv in expected if key.startswith(prefix)]
        assert store.range(prefix, 2) == (matching[:2], len(matching), len(matching) > 2)
    for key in (b"a", b"b", b"zz"):
        assert store.get(key) == model.data.get(key)
    compact_revision, kept = model.window()
    assert store.compact_revision == compact_revision
    for start in range(compact_revision, model.revision + 2):
        assert store.events_since(start, limit=1000) == [
            e for e in kept if e.kv.mod_revision >= start
        ]
        assert store.events_since(start, prefix=b"b") == [
            e for e in kept if e.kv.mod_revision >= start and e.kv.key.startswith(b"b")
        ]
    if compact_revision > 1:
        try:
            store.events_since(compact_revision - 1)
        except Compacted as exc:
            assert exc.compact_revision == compact_revision
        else:
            raise AssertionError("a compacted revision was served")


def normalise(result: ApplyResult) -> ApplyResult:
    """Error messages are prose; compare error codes only."""
    return ErrorResult(result.code, "") if isinstance(result, ErrorResult) else result


@PROPERTY
@given(request_lists(40))
def test_the_store_agrees_with_the_reference_model(requests: list[Request]) -> None:
    store, model = KVStore(LIMITS), Model(LIMITS)
    for req in requests:
        result = store.apply(encode_request(req))
        assert normalise(result) == model.apply(req)
        event(type(result).__name__)
    check_reads(store, model)
    event(f"compact_revision > 1: {model.window()[0] > 1}")


@PROPERTY
@given(request_lists(30), st.data())
def test_snapshot_and_restore_at_any_point(requests: list[Request], data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(requests)), label="cut")
    original = KVStore(LIMITS)
    for req in requests[:cut]:
        original.apply(encode_request(req))
    image = original.snapshot()
    copy = KVStore(LIMITS)
    copy.apply(encode_request(Request(Put(b"junk", b"to be replaced"))))
    copy.restore(image)
    assert copy.snapshot() == image
    for req in requests[cut:]:
        command = encode_request(req)
        assert copy.apply(command) == original.apply(command)
    assert copy.snapshot() == original.snapshot()
    assert copy.events_since(copy.compact_revision) == original.events_since(
        original.compact_revision
    )


@PROPERTY
@given(request_lists(30))
def test_two_stores_fed_alike_have_identical_snapshots(requests: list[Request]) -> None:
    first, second = KVStore(LIMITS), KVStore(LIMITS)
    for req in requests:
        command = encode_request(req)
        first.apply(command)
        second.apply(command)
    assert first.snapshot() == second.snapshot()


# --- robustness on hostile input ------------------------------------------------------------

MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.sampled_from(["put", "delete", "get", "txn", "type", "op", "key", "value", "compare"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["op", "type", "key", "value", "compare", "success", "failure", "target"]
            )
            | st.text(max_size=4),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@PROPERTY
@given(st.one_of(st.binary(max_size=64), MSGPACK_VALUES.map(msgspec.msgpack.encode)))
def test_decode_request_raises_only_invalid_command(data: bytes) -> None:
    with contextlib.suppress(InvalidCommand):
        decode_request(data)
    store = KVStore()
    before = store.snapshot()
    result = store.apply(data)
    if isinstance(result, ErrorResult):
        assert store.snapshot() == before


@PROPERTY
@given(REQUESTS, st.data())
def test_decode_request_on_damaged_commands(req: Request, data: st.DataObject) -> None:
    command = bytearray(encode_request(req))
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        at = data.draw(st.integers(0, len(command) - 1), label="at")
        command[at] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.integers(0, len(command)), label="cut")
    for damaged in (bytes(command), bytes(command[:cut])):
        with contextlib.suppress(InvalidCommand):
            decode_request(damaged)


JSON_FIELDS = (
    *("compare", "success", "failure", "put", "get", "delete", "key", "key_base64"),
    *("value", "value_base64", "target", "op"),
)
JSON_FIELDS = (
    *("compare", "success", "failure", "put", "get", "delete", "key", "key_base64"),
    *("value", "value_base64", "target", "op"),
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.sampled_from(["==", "<", "version", "value", "mod_revision", "YQ==", "/w=", "a"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(JSON_FIELDS) | st.text(max_size=3),
            inner,
            max_size=4,
        )
    ),
    max_leaves=25,
)


@PROPERTY
@given(JSON_VALUES)
def test_txn_from_json_raises_only_invalid_command(obj: object) -> None:
    try:
        txn = txn_from_json(obj, LIMITS)
    except InvalidCommand:
        return
    assert decode_request(encode_request(Request(txn))) == Request(txn)


def txn_to_json(txn: Txn) -> dict[str, object]:
    """A JSON body for ``txn`` (keys and values as base64), for the round-trip property."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    def op_json(op: TxnOp) -> dict[str, object]:
        if isinstance(op, Put):
            return {"put": {"key_base64": b64(op.key), "value_base64": b64(op.value)}}
        return {("delete" if isinstance(op, Delete) else "get"): {"key_base64": b64(op.key)}}

    def compare_json(c: Compare) -> dict[str, object]:
        value = {"value_base64": b64(c.value)} if isinstance(c.value, bytes) else {"value": c.value}
        return {"key_base64": b64(c.key), "target": c.target, "op": c.op, **value}

    return {
        "compare": [compare_json(c) for c in txn.compare],
        "success": [op_json(op) for op in txn.success],
        "failure": [op_json(op) for op in txn.failure],
    }


@PROPERTY
@given(TXNS)
def test_txn_from_json_round_trips(txn: Txn) -> None:
    assert txn_from_json(txn_to_json(txn), LIMITS) == txn


PUT_EDGES = KVLimits(key_bytes_max=8, value_bytes_max=16, request_bytes_max=20)


@given(
    st.binary(max_size=10),
    st.binary(max_size=18),
    st.one_of(st.none(), st.text(max_size=4)),
    st.one_of(st.integers(min_value=-2, max_value=2**63 + 1), st.just(1.5)),
)
def test_the_quick_put_check_agrees_with_the_full_one(
    key: bytes, value: bytes, idempotency_key: str | None, time_ms: int
) -> None:
    req = Request(Put(key, value), idempotency_key=idempotency_key, time_ms=time_ms)

    def verdict(check: object) -> str:
        try:
            check(req, PUT_EDGES)  # type: ignore[operator]
        except InvalidCommand as error:
            return type(error).__name__
        return "valid"

    full = verdict(commands._check_request_fully)
    assert verdict(commands.check_request) == full
    if commands._plain_valid_put(req, PUT_EDGES):
        assert full == "valid"
