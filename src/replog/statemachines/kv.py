"""The replicated key-value store (etcd-like): a pure, deterministic ``StateMachine``.

Theory of operation
-------------------
The store owns the key space, the store revision, the table of idempotent requests and the
watch history. It changes only in ``apply``, from committed log commands, so every node that
applies the same log reaches the same state and the same ``snapshot`` bytes.

Invariants:

* Keys are kept in a dict (key -> ``KeyValue``) and in a sorted list of the same keys
  (``sortedcontainers.SortedList``: O(log n) inserts, where a plain list moves every later
  key), so a point read is O(1) and a prefix range is O(log n + k) by bisection.
* ``revision`` grows by exactly one per command that changes a key (a put always does; a
  transaction whose executed branch writes is one revision; deleting a missing key is none).
  For every key, 1 <= create_revision <= mod_revision <= revision and version >= 1.
* The watch history holds every event of the revisions compact_revision..revision, in
  revision order (a transaction's events share its revision), and nothing older. After each
  command, while it is over its event or byte budget, the oldest revision's events are
  dropped, all of them; the newest revision is always kept whole.
* Time is ``now_ms``, the largest ``time_ms`` stamped on an applied request (never a clock).
  An idempotency entry remembers (fingerprint of the operation, result); it expires
  ``idempotency_ttl_ms`` after it was stored and is evicted oldest-first beyond the count and
  byte bounds. The table is in insertion order, which is also stamp order.
* Every command is checked whole (``check_request``) before anything changes, and executing a
  checked command cannot fail, so a command is applied entirely or not at all.

Reads (``get``, ``range``, ``events_since``) do not go through the log; the server calls them
after its read barrier.
"""

from __future__ import annotations

import hashlib
import operator
import time
import weakref
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate
from typing import Any

import msgspec
from sortedcontainers import SortedList  # type: ignore[import-untyped]

from replog.core.errors import ReplogError
from replog.statemachines.commands import (
    ApplyResult,
    Compare,
    Delete,
    DeleteResult,
    ErrorResult,
    Event,
    GetResult,
    InvalidCommand,
    KeyValue,
    KVLimits,
    Put,
    PutResult,
    Request,
    Txn,
    TxnOp,
    TxnResult,
    WriteOp,
    WriteResult,
    check_request,
    decode_request,
    encode_op,
)

_COMPARE_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}


IMAGE_FORMAT = 1
IMAGE_CHUNK_ITEMS = 4096  # items per encoding call when a snapshot image is encoded ...
IMAGE_CHUNK_BYTES = 1 << 20  # ... and about this many key and value bytes at most
FINGERPRINT_BYTES = 16
_PUT_CURRENT = "put="  # in an image: a put event whose kv is the key's current one
_ENTRY_OVERHEAD_BYTES = 64  # a rough in-memory cost of one table entry beyond its bytes


class Compacted(ReplogError):
    """The requested revision is older than the oldest one the watch history still holds."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(
            f"the watch history starts at revision {compact_revision}; older revisions "
            "were compacted"
        )
        self.compact_revision = compact_revision


class InvalidSnapshot(ValueError):
    """A snapshot image that is not a well-formed image of a KV store."""


class IdempotencyEntry(msgspec.Struct, frozen=True, array_like=True):
    key: str
    fingerprint: bytes  # of the operation's canonical bytes
    stored_ms: int  # now_ms when the result was stored
    result: WriteResult


class KVImage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The snapshot image: everything the store holds, in a canonical order."""

    format: int
    revision: int
    compact_revision: int
    now_ms: int
    kvs: list[KeyValue]  # in key order
    idempotency: list[IdempotencyEntry]  # oldest first
    history: list[Event]  # oldest first


_image_encoder = msgspec.msgpack.Encoder()


def encode_image(
    image: KVImage,
    chunk_items: int = IMAGE_CHUNK_ITEMS,
    pace: bool = False,
    chunk_bytes: int = IMAGE_CHUNK_BYTES,
) -> bytes:
    """``msgspec.msgpack.encode(image)``, byte for byte, made of many short encodings.

    One encoding of a large image would hold the GIL for all of it (hundreds of milliseconds
    for a million keys), stalling the event loop while a snapshot is encoded on another
    thread. Here each list is encoded ``chunk_items`` items at a time, fewer when their keys
    and values add up to more than ``chunk_bytes`` (large values), so the GIL can change
    hands between chunks, and the pieces are joined by ``bytes.join``, which copies without
    holding it. With ``pace`` (for a background thread), the encoding rests after each chunk
    for as long as the chunk took: it takes at most about half of the GIL, so the loop keeps
    at least half its speed instead of winning the GIL back only every switch interval."""
    fields = KVImage.__struct_fields__
    assert len(fields) < 16, "a fixmap header"
    pieces = [bytes([0x80 | len(fields)])]
    for name in fields:
        pieces.append(_image_encoder.encode(name))
        value = getattr(image, name)
        if type(value) is not list:
            pieces.append(_image_encoder.encode(value))
            continue
        pieces.append(_array_header(len(value)))
        for chunk in _chunks(value, _ITEM_BYTES[name], chunk_items, chunk_bytes):
            started = time.perf_counter()
            encoded = _image_encoder.encode(chunk)  # its own array header, then the items
            pieces.append(encoded[len(_array_header(len(chunk))) :])
            if pace:
                _rest(time.perf_counter() - started)
    return b"".join(pieces)


_rest = time.sleep  # releases the GIL while it waits


def _chunks(
    items: list[Any], item_bytes: Callable[[list[Any]], Iterable[int]], most: int, budget: int
) -> Iterator[list[Any]]:
    """``items`` in runs of at most ``most`` items whose ``item_bytes`` add up to at most
    ``budget`` (a single item may exceed it). Sizes are measured a window at a time, the
    window growing while whole windows fit: measuring a long list at once would itself hold
    the GIL for long."""
    start, window = 0, 16
    while start < len(items):
        candidates = items[start : start + min(window, most)]
        taken = max(1, bisect_right(list(accumulate(item_bytes(candidates))), budget))
        yield candidates if taken == len(candidates) else candidates[:taken]
        start += taken
        window = 2 * taken + 16


_KEY, _VALUE = operator.attrgetter("key"), operator.attrgetter("value")
_KV = operator.attrgetter("kv")


def _kvs_bytes(kvs: list[KeyValue]) -> Iterable[int]:
    return map(operator.add, map(len, map(_KEY, kvs)), map(len, map(_VALUE, kvs)))


_ITEM_BYTES: dict[str, Callable[[list[Any]], Iterable[int]]] = {
    "kvs": _kvs_bytes,
    "history": lambda events: _kvs_bytes(list(map(_KV, events))),
    "idempotency": lambda entries: map(entry_cost_bytes, entries),
}


def _array_header(length: int) -> bytes:
    """The msgpack header of an array of ``length`` items (fixarray, array 16, array 32)."""
    if length < 16:
        return bytes([0x90 | length])
    if length < 1 << 16:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


class KVStore:
    """A replicated key-value store; see the module docstring for its invariants."""

    def __init__(self, limits: KVLimits | None = None) -> None:
        self._limits = limits or KVLimits()
        self._kvs: dict[bytes, KeyValue] = {}
        self._keys = SortedList()  # the same keys as _kvs, sorted
        self._captures: list[_Capture] = []  # of the snapshot encodings in progress
        self._revision = 0
        self._now_ms = 0
        self._idempotency: OrderedDict[str, IdempotencyEntry] = OrderedDict()
        self._idempotency_bytes = 0
        self._history: list[Event] = []  # live events are _history[_history_start:]
        self._history_start = 0
        self._history_bytes = 0
        self._dropped_bytes = 0  # held by _history[:_history_start], not yet freed
        self._compact_revision = 1

    # --- properties ---------------------------------------------------------------------

    @property
    def limits(self) -> KVLimits:
        return self._limits

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def compact_revision(self) -> int:
        return self._compact_revision

    @property
    def now_ms(self) -> int:
        return self._now_ms

    @property
    def idempotency_keys(self) -> int:
        """How many idempotency keys are remembered."""
        return len(self._idempotency)

    @property
    def idempotency_retention_ms(self) -> int:
        """How long ago, by the clock stamped in the log, the oldest remembered idempotency
        key was stored (0 when none is): a retry later than this may find its key forgotten
        and be applied again."""
        if not self._idempotency:
            return 0
        return self._now_ms - next(iter(self._idempotency.values())).stored_ms

    def __len__(self) -> int:
        return len(self._keys)

    # --- StateMachine -------------------------------------------------------------------

    def apply(self, command: bytes) -> ApplyResult:
        """Apply one committed command. Never raises for bad bytes: answers ``ErrorResult``."""
        try:
            req = decode_request(command, self._limits)
        except InvalidCommand as exc:
            return ErrorResult(exc.code, str(exc))
        return self._apply_checked(req)

    def apply_request(self, req: Request) -> ApplyResult:
        """``apply`` of an already decoded request (it is checked all the same)."""
        try:
            check_request(req, self._limits)
        except InvalidCommand as exc:
            return ErrorResult(exc.code, str(exc))
        return self._apply_checked(req)

    def snapshot(self) -> bytes:
        return self._snapshot_encoder(pace=False)()

    def snapshot_encoder(self) -> Callable[[], bytes]:
        """Capture the state now and return the function that encodes that capture into
        ``snapshot`` bytes. The capture is cheap: the sorted keys, the history and the
        idempotency table are copied at C speed (the frozen values they hold are shared),
        the key table is not copied at all (a ``_Capture`` remembers the old value of each
        key written after it). The encoding may run on another thread while the store goes
        on applying; there it leaves the event loop at least half of the GIL
        (``encode_image`` with ``pace``)."""
        return self._snapshot_encoder(pace=True)

    def _snapshot_encoder(self, pace: bool) -> Callable[[], bytes]:
        live, capture = self._kvs, _Capture()
        self._captures = [*self._captures, capture]
        keys = list(self._keys)
        idempotency = list(self._idempotency.values())
        history = self._history[self._history_start :]
        revision, compact_revision, now_ms = self._revision, self._compact_revision, self._now_ms

        def at_capture(key: bytes) -> KeyValue | None:
            # The live value first, then the remembered one: a write remembers the old value
            # before it changes the table, so either read order of a racing write is covered.
            kv = live.get(key)
            return capture.old.get(key, kv)

        def encode() -> bytes:
            try:
                image = KVImage(
                    format=IMAGE_FORMAT,
                    revision=revision,
                    compact_revision=compact_revision,
                    now_ms=now_ms,
                    kvs=[_present(at_capture(key)) for key in keys],
                    idempotency=idempotency,
                    history=[_image_event(at_capture, event) for event in history],
                )
            finally:
                capture.done = True
            return encode_image(image, pace=pace)

        weakref.finalize(encode, setattr, capture, "done", True)  # dropped without being run
        return encode

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot image; raises ``InvalidSnapshot`` (a ValueError)
        on a malformed image and then leaves the current state untouched."""
        self._install(load_image(data))

    def snapshot_restorer(self, data: bytes | memoryview) -> Callable[[], None]:
        """Decode and check a snapshot image now, without reading or changing the live state,
        and return the function that installs it (at once, without decoding anything). The
        loading may run on another thread while the store serves reads; there it leaves the
        event loop at least half of the GIL (``load_image`` with ``pace``). Raises
        ``InvalidSnapshot`` as ``restore`` does."""
        loaded = load_image(data, pace=True)
        return lambda: self._install(loaded)

    def _install(self, loaded: _Loaded) -> None:
        self._captures = []  # their encodings read the old table, which no longer changes
        self._kvs = loaded.kvs
        self._keys = loaded.sorted_keys
        self._revision = loaded.revision
        self._compact_revision = loaded.compact_revision
        self._now_ms = loaded.now_ms
        self._idempotency = loaded.idempotency
        self._idempotency_bytes = loaded.idempotency_bytes
        self._history = loaded.history
        self._history_start = 0
        self._dropped_bytes = 0
        self._history_bytes = loaded.history_bytes

    # --- reads --------------------------------------------------------------------------

    def get(self, key: bytes) -> KeyValue | None:
        return self._kvs.get(key)

    def range(self, prefix: bytes = b"", limit: int = 1000) -> tuple[list[KeyValue], int, bool]:
        """The keys that start with ``prefix`` in byte order, at most ``limit`` of them:
        (kvs, count of all matching keys, whether kvs was cut by the limit)."""
        if type(limit) is not int or not 0 <= limit <= self._limits.range_limit_max:
            raise InvalidCommand(
                f"limit must be an integer from 0 to {self._limits.range_limit_max}, not {limit!r}"
            )
        low, high = self._prefix_bounds(prefix)
        count = high - low
        kvs = [self._kvs[key] for key in self._keys.islice(low, low + min(limit, count))]
        return kvs, count, count > limit

    def events_since(
        self,
        start_revision: int,
        *,
        key: bytes | None = None,
        prefix: bytes | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        """Events of revision >= ``start_revision``, oldest first, of ``key`` or under
        ``prefix`` (or all). At most ``limit`` events, except that the events of one
        revision are never split: a watcher resumes at the last event's revision + 1."""
        if key is not None and prefix is not None:
            raise InvalidCommand("a watch takes a key or a prefix, not both")
        if type(limit) is not int or limit < 1:
            raise InvalidCommand(f"limit must be a positive integer, not {limit!r}")
        if max(start_revision, 1) < self._compact_revision:
            raise Compacted(self._compact_revision)
        events = self._history
        index = bisect_left(
            events, start_revision, lo=self._history_start, key=lambda e: e.kv.mod_revision
        )
        found: list[Event] = []
        for event in events[index:]:
            if len(found) >= limit and event.kv.mod_revision != found[-1].kv.mod_revision:
                break
            if _matches(event.kv.key, key, prefix):
                found.append(event)
        return found

    # --- applying -----------------------------------------------------------------------

    def _apply_checked(self, req: Request) -> ApplyResult:
        self._now_ms = max(self._now_ms, req.time_ms)
        self._expire_idempotency()
        if req.idempotency_key is None:
            return self._execute(req.op)
        fingerprint = hashlib.blake2b(encode_op(req.op), digest_size=16).digest()
        known = self._idempotency.get(req.idempotency_key)
        if known is not None:
            if known.fingerprint == fingerprint:
                return known.result
            return ErrorResult(
                "idempotency_key_reused",
                f"the idempotency key {req.idempotency_key!r} was used for a different request",
            )
        result = self._execute(req.op)
        self._remember(IdempotencyEntry(req.idempotency_key, fingerprint, self._now_ms, result))
        return result

    def _execute(self, op: WriteOp) -> WriteResult:
        result: WriteResult
        if isinstance(op, Put):
            result = self._put(op.key, op.value, self._revision + 1)
        elif isinstance(op, Delete):
            result = self._delete(op.key, self._revision + 1)
        else:
            result = self._txn(op)
        self._trim_history()
        return result

    def _keep_for_captures(self, key: bytes, old: KeyValue | None) -> None:
        """Keep ``old``, the value ``key`` had before this write, for the encodings in
        progress (``snapshot_encoder``) that have not seen the key written yet."""
        self._captures = captures = [c for c in self._captures if not c.done]
        for capture in captures:
            capture.old.setdefault(key, old)

    def _put(self, key: bytes, value: bytes, revision: int) -> PutResult:
        """Write ``key`` at ``revision``; the caller decides when the store revision moves."""
        prev = self._kvs.get(key)
        if prev is None:
            kv = KeyValue(key, value, revision, revision, 1)
            self._keys.add(key)
        else:
            kv = KeyValue(key, value, prev.create_revision, revision, prev.version + 1)
        if self._captures:
            self._keep_for_captures(key, prev)
        self._kvs[key] = kv
        self._revision = max(self._revision, revision)
        self._record(Event("put", kv))
        return PutResult(revision, kv, prev)

    def _delete(self, key: bytes, revision: int) -> DeleteResult:
        prev = self._kvs.get(key)
        if prev is None:
            return DeleteResult(self._revision, 0, None)
        if self._captures:
            self._keep_for_captures(key, prev)
        del self._kvs[key]
        self._keys.remove(key)
        self._revision = max(self._revision, revision)
        self._record(Event("delete", KeyValue(key, b"", 0, revision, 0)))
        return DeleteResult(revision, 1, prev)

    def _txn(self, txn: Txn) -> TxnResult:
        succeeded = all(self._compare_holds(cmp) for cmp in txn.compare)
        ops = txn.success if succeeded else txn.failure
        writes = any(
            isinstance(op, Put) or (isinstance(op, Delete) and op.key in self._kvs) for op in ops
        )
        revision = self._revision + 1 if writes else self._revision
        responses = tuple(self._txn_op(op, revision) for op in ops)
        assert self._revision == revision, "a transaction moved the revision by more than one"
        return TxnResult(revision, succeeded, responses)

    def _txn_op(self, op: TxnOp, revision: int) -> PutResult | DeleteResult | GetResult:
        if isinstance(op, Put):
            return self._put(op.key, op.value, revision)
        if isinstance(op, Delete):
            result = self._delete(op.key, revision)
            return result if result.deleted else DeleteResult(revision, 0, None)
        return GetResult(self._kvs.get(op.key))

    def _compare_holds(self, cmp: Compare) -> bool:
        kv = self._kvs.get(cmp.key)
        if cmp.target == "value":
            if kv is None:
                return False  # every value compare against a missing key is false
            actual: bytes | int = kv.value
        elif kv is None:
            actual = 0
        else:
            actual = getattr(kv, cmp.target)
        compare = _COMPARE_OPS[cmp.op]
        return bool(compare(actual, cmp.value))

    # --- bounded tables -----------------------------------------------------------------

    def _record(self, event: Event) -> None:
        self._history.append(event)
        self._history_bytes += _kv_cost_bytes(event.kv)

    def _trim_history(self) -> None:
        """Bound the history after a command: drop the oldest revisions, whole, while it is
        over budget, but never the newest one (so it may exceed the budget by one revision,
        which check_request bounds). Runs for every command, hence the local names."""
        limits, history = self._limits, self._history
        events_max, bytes_max = limits.history_events_max, limits.history_bytes_max
        start, end = self._history_start, len(history)
        while (end - start > events_max or self._history_bytes > bytes_max) and (
            history[start].kv.mod_revision < self._revision
        ):
            start = self._drop_oldest_revision(start, end)
        self._history_start = start
        if start and (start >= end - start or self._dropped_bytes >= bytes_max // 4):
            # Free the dropped events once they are as many as the live ones (amortized O(1)
            # per event), or as soon as they hold a quarter of the byte budget (large values).
            del history[:start]
            self._history_start = 0
            self._dropped_bytes = 0

    def _drop_oldest_revision(self, start: int, end: int) -> int:
        """Drop every event of the oldest revision in the history (a revision is held whole
        or not at all); returns the new start of the live history."""
        history = self._history
        revision = history[start].kv.mod_revision
        dropped_bytes = 0
        while start < end and (kv := history[start].kv).mod_revision == revision:
            dropped_bytes += _kv_cost_bytes(kv)
            start += 1
        self._history_bytes -= dropped_bytes
        self._dropped_bytes += dropped_bytes
        self._compact_revision = revision + 1
        return start

    def _remember(self, entry: IdempotencyEntry) -> None:
        self._idempotency[entry.key] = entry
        self._idempotency_bytes += entry_cost_bytes(entry)
        limits = self._limits
        while len(self._idempotency) > 1 and (
            len(self._idempotency) > limits.idempotency_keys_max
            or self._idempotency_bytes > limits.idempotency_bytes_max
        ):
            _, oldest = self._idempotency.popitem(last=False)
            self._idempotency_bytes -= entry_cost_bytes(oldest)

    def _expire_idempotency(self) -> None:
        deadline_ms = self._now_ms - self._limits.idempotency_ttl_ms
        while self._idempotency:
            oldest = next(iter(self._idempotency.values()))
            if oldest.stored_ms > deadline_ms:
                return
            self._idempotency.popitem(last=False)
            self._idempotency_bytes -= entry_cost_bytes(oldest)

    def _prefix_bounds(self, prefix: bytes) -> tuple[int, int]:
        low = self._keys.bisect_left(prefix)
        end = prefix_end(prefix)
        high = len(self._keys) if end is None else self._keys.bisect_left(end)
        return low, high


class _Capture:
    """What a snapshot encoding needs besides the live key table: the value each key had at
    the capture (None: absent), for the keys written since."""

    __slots__ = ("done", "old")

    def __init__(self) -> None:
        self.old: dict[bytes, KeyValue | None] = {}
        self.done = False  # set by the encoding; the next write forgets the capture


def _present(kv: KeyValue | None) -> KeyValue:
    assert kv is not None, "every captured key had a value at the capture"
    return kv


def _image_event(at_capture: Callable[[bytes], KeyValue | None], event: Event) -> Event:
    """A put event whose kv is still the key's current one is written without its value (the
    image holds that value once, in ``kvs``)."""
    kv = event.kv
    if event.type == "put":
        current = at_capture(kv.key)
        if current is kv or (
            current is not None and current.mod_revision == kv.mod_revision and current == kv
        ):
            return Event(_PUT_CURRENT, KeyValue(kv.key, b"", *_revisions(kv)))
    return event


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key that starts with ``prefix``; None if there is
    no such key (an empty prefix, or one made only of 0xff bytes)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _matches(event_key: bytes, key: bytes | None, prefix: bytes | None) -> bool:
    if key is not None:
        return event_key == key
    if prefix is not None:
        return event_key.startswith(prefix)
    return True


def _kv_cost_bytes(kv: KeyValue | None) -> int:
    return 0 if kv is None else len(kv.key) + len(kv.value) + _ENTRY_OVERHEAD_BYTES


def event_cost_bytes(event: Event) -> int:
    return _kv_cost_bytes(event.kv)


def entry_cost_bytes(entry: IdempotencyEntry) -> int:
    result = entry.result
    if type(result) is PutResult:  # the common case, without building a list
        kv, prev = result.kv, result.prev_kv
        cost = len(entry.key) + len(kv.key) + len(kv.value) + 2 * _ENTRY_OVERHEAD_BYTES
        return cost if prev is None else cost + _kv_cost_bytes(prev)
    if isinstance(result, TxnResult):
        kvs = [kv for r in result.responses for kv in _result_kvs(r)]
    else:
        kvs = _result_kvs(result)
    return len(entry.key) + _ENTRY_OVERHEAD_BYTES + sum(_kv_cost_bytes(kv) for kv in kvs)


def _result_kvs(result: PutResult | DeleteResult | GetResult) -> list[KeyValue | None]:
    if isinstance(result, PutResult):
        return [result.kv, result.prev_kv]
    if isinstance(result, DeleteResult):
        return [result.prev_kv]
    return [result.kv]


class _RawImage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``KVImage`` with every list item left as its encoded bytes, so that the items can be
    decoded a chunk at a time."""

    format: int
    revision: int
    compact_revision: int
    now_ms: int
    kvs: list[msgspec.Raw]
    idempotency: list[msgspec.Raw]
    history: list[msgspec.Raw]


_raw_image_decoder = msgspec.msgpack.Decoder(_RawImage)
_item_decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {
    "kvs": msgspec.msgpack.Decoder(list[KeyValue]),
    "idempotency": msgspec.msgpack.Decoder(list[IdempotencyEntry]),
    "history": msgspec.msgpack.Decoder(list[Event]),
}


class _Loaded:
    """The state an image describes, built and checked apart from any store, a chunk of
    items at a time (``load_image``); each ``add_*`` returns the first problem it finds."""

    def __init__(self, image: _RawImage) -> None:
        self.revision = image.revision
        self.compact_revision = image.compact_revision
        self.now_ms = image.now_ms
        self.kvs: dict[bytes, KeyValue] = {}  # in key order (checked)
        self.sorted_keys = SortedList()  # the same keys, once all are loaded
        self.last_key = b""
        self.idempotency: OrderedDict[str, IdempotencyEntry] = OrderedDict()
        self.idempotency_bytes = 0
        self.history: list[Event] = []
        self.history_bytes = 0

    def add_kvs(self, kvs: list[KeyValue]) -> str | None:
        for kv in kvs:
            if not kv.key or kv.key <= self.last_key:
                return f"key {kv.key!r} is empty or out of order"
            if not 1 <= kv.create_revision <= kv.mod_revision <= self.revision or kv.version < 1:
                return f"key {kv.key!r} has inconsistent revisions or version"
            self.last_key = kv.key
        self.kvs.update(zip(map(_KEY, kvs), kvs, strict=True))
        return None

    def add_idempotency(self, entries: list[IdempotencyEntry]) -> str | None:
        table = self.idempotency
        stored_ms = next(reversed(table.values())).stored_ms if table else 0
        for entry in entries:
            if entry.key in table or len(entry.fingerprint) != FINGERPRINT_BYTES:
                return f"idempotency entry {entry.key!r} is repeated or has a bad fingerprint"
            if not stored_ms <= entry.stored_ms <= self.now_ms:
                return f"idempotency entry {entry.key!r} is out of time order"
            table[entry.key] = entry
            stored_ms = entry.stored_ms
        self.idempotency_bytes += sum(map(entry_cost_bytes, entries))
        return None

    def add_history(self, events: list[Event]) -> str | None:
        """Checks the events, and replaces each value-less current put with the key's
        current kv (so ``kvs`` must be complete)."""
        revision = self.history[-1].kv.mod_revision if self.history else self.compact_revision
        for event in events:
            kv = event.kv
            if not revision <= kv.mod_revision <= self.revision:
                return f"history event at revision {kv.mod_revision} is out of order"
            if event.type not in ("put", "delete", _PUT_CURRENT) or not kv.key:
                return f"history event at revision {kv.mod_revision} is malformed"
            revision = kv.mod_revision
            if event.type == _PUT_CURRENT:
                current = self.kvs.get(kv.key)
                if current is None or _revisions(current) != _revisions(kv):
                    return f"history event at revision {kv.mod_revision} has no current kv"
                # snapshot() marks only a put whose whole kv equals the current one: the
                # revisions and version alone may repeat in a txn that puts, deletes, puts a key
                event = Event("put", current)
            self.history.append(event)
            self.history_bytes += event_cost_bytes(event)
        return None


def load_image(data: bytes | memoryview, pace: bool = False) -> _Loaded:
    """The state the image in ``data`` describes, checked for internal consistency; raises
    ``InvalidSnapshot``.

    The list items are decoded, checked and indexed a chunk at a time (as ``encode_image``
    encodes them): decoding a million keys in one call held the GIL for about 0.4 s, and the
    whole restore took 1.2-1.4 s, all of it a stall of the event loop. With ``pace`` (for a
    background thread) the loading rests after each chunk for as long as the chunk took."""
    try:
        raw = _raw_image_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise InvalidSnapshot(f"malformed KV snapshot image: {exc}") from None
    problem = _header_problem(raw)
    if problem is not None:
        raise _inconsistent(problem)
    loaded = _Loaded(raw)
    adders: dict[str, Callable[[list[Any]], str | None]] = {
        "kvs": loaded.add_kvs,
        "idempotency": loaded.add_idempotency,
        "history": loaded.add_history,  # after kvs: it looks up current kvs
    }
    for name, add in adders.items():
        decoder = _item_decoders[name]
        for chunk in _chunks(getattr(raw, name), _raw_bytes, IMAGE_CHUNK_ITEMS, IMAGE_CHUNK_BYTES):
            started = time.perf_counter()
            try:
                items = decoder.decode(b"".join([_array_header(len(chunk)), *chunk]))
            except msgspec.DecodeError as exc:
                raise InvalidSnapshot(f"malformed KV snapshot image: {exc}") from None
            problem = add(items)
            if problem is not None:
                raise _inconsistent(problem)
            if pace:
                _rest(time.perf_counter() - started)
    loaded.sorted_keys = SortedList(loaded.kvs)
    return loaded


def _inconsistent(problem: str) -> InvalidSnapshot:
    return InvalidSnapshot(f"inconsistent KV snapshot image: {problem}")


def _raw_bytes(items: list[msgspec.Raw]) -> Iterable[int]:
    return map(len, items)


def _revisions(kv: KeyValue) -> tuple[int, int, int]:
    return kv.create_revision, kv.mod_revision, kv.version


def _header_problem(image: _RawImage) -> str | None:
    if image.format != IMAGE_FORMAT:
        return f"format {image.format}, expected {IMAGE_FORMAT}"
    if image.revision < 0 or image.now_ms < 0:
        return "negative revision or now_ms"
    if not 1 <= image.compact_revision <= image.revision + 1:
        return f"compact_revision {image.compact_revision} outside [1, revision + 1]"
    return None
