"""The KV store's commands and results: the values that travel in the log, and their checks.

Theory of operation
-------------------
A write reaches the log as one ``Request`` encoded with msgspec msgpack (never pickle): an
operation (``Put``, ``Delete`` or ``Txn``), an optional idempotency key, and the proposing
server's wall clock (``time_ms``), which is the only notion of time the state machine has.
The operations form a tagged union (the ``type`` field names the kind), so the encoding is
self-describing and the same bytes decode to the same request on every node.

``check_request`` is the single gate for well-formedness and limits. The HTTP layer calls it
before proposing, so bad input never reaches the log; ``KVStore.apply`` calls it again on the
decoded bytes, so a malformed entry that did reach the log is answered with an ``ErrorResult``
on every node alike and changes nothing. Because ``apply`` enforces the limits, every node of a
cluster must run its KV store with the same ``KVLimits``: they are part of the replicated
machine's definition, like its code.

Results are frozen values. They carry a tag too, because the store keeps the results of
idempotent requests in its snapshot and decodes them back into the same types.
"""

from __future__ import annotations

import functools
from typing import Final

import msgspec

from replog.core.errors import ReplogError

MiB: Final = 1024 * 1024
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
IDEMPOTENCY_KEY_CHARS_MAX: Final = 128
COMPARE_TARGETS: Final = ("value", "version", "mod_revision", "create_revision")
COMPARE_OPS: Final = ("==", "!=", "<", ">")


class InvalidCommand(ReplogError, ValueError):
    """A request is malformed or breaks a rule; it must not be (or was not) applied."""

    code = "invalid_request"


class TooLarge(InvalidCommand):
    """A key, value, request or transaction is over its limit."""

    code = "too_large"


class KVLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Bounds on everything the KV store accepts or keeps. Identical on every node."""

    key_bytes_max: int = 4096
    value_bytes_max: int = 1 * MiB
    request_bytes_max: int = 2 * MiB  # keys and values in one request (see payload_bytes_max)
    txn_ops_max: int = 128  # per list: success and failure each
    txn_compares_max: int = 128
    range_limit_max: int = 10_000
    idempotency_keys_max: int = 100_000
    idempotency_ttl_ms: int = 600_000
    idempotency_bytes_max: int = 64 * MiB  # remembered results; the newest is always kept
    history_events_max: int = 100_000
    history_bytes_max: int = 64 * MiB  # keys and values held by the watch history

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"KVLimits.{name} must be a positive integer, not {value!r}")

    @property
    def payload_bytes_max(self) -> int:
        """The most key and value bytes one request may carry: ``request_bytes_max``, but
        never less than one largest key plus one largest value (so any valid put fits)."""
        return max(self.request_bytes_max, self.key_bytes_max + self.value_bytes_max)


# --- commands -----------------------------------------------------------------------------


class Put(msgspec.Struct, tag="put", frozen=True, forbid_unknown_fields=True):
    key: bytes
    value: bytes


class Delete(msgspec.Struct, tag="delete", frozen=True, forbid_unknown_fields=True):
    key: bytes


class Get(msgspec.Struct, tag="get", frozen=True, forbid_unknown_fields=True):
    """A read inside a transaction (reads outside transactions do not go through the log)."""

    key: bytes


class Compare(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``target`` of ``key`` ``op`` ``value``: bytes for target "value", an integer otherwise."""

    key: bytes
    target: str
    op: str
    value: bytes | int


TxnOp = Put | Delete | Get


class Txn(msgspec.Struct, tag="txn", frozen=True, forbid_unknown_fields=True):
    compare: tuple[Compare, ...] = ()
    success: tuple[TxnOp, ...] = ()
    failure: tuple[TxnOp, ...] = ()


WriteOp = Put | Delete | Txn


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    op: WriteOp
    idempotency_key: str | None = None
    time_ms: int = 0


# --- results ------------------------------------------------------------------------------


class KeyValue(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A key's state. Encoded as an array (snapshots hold many of them)."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


class PutResult(msgspec.Struct, tag="put", frozen=True):
    revision: int
    kv: KeyValue
    prev_kv: KeyValue | None


class DeleteResult(msgspec.Struct, tag="delete", frozen=True):
    revision: int
    deleted: int
    prev_kv: KeyValue | None


class GetResult(msgspec.Struct, tag="get", frozen=True):
    kv: KeyValue | None


class TxnResult(msgspec.Struct, tag="txn", frozen=True):
    revision: int
    succeeded: bool
    responses: tuple[PutResult | DeleteResult | GetResult, ...]


class ErrorResult(msgspec.Struct, tag="error", frozen=True):
    """A command the store refused; it changed nothing. ``code`` follows docs/http-api.md."""

    code: str
    message: str


WriteResult = PutResult | DeleteResult | TxnResult
ApplyResult = PutResult | DeleteResult | TxnResult | ErrorResult


class Event(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One change in the watch history. ``kv.mod_revision`` is the revision of the change; a
    delete's ``kv`` has the key, an empty value, version 0 and create_revision 0."""

    type: str  # "put" | "delete"
    kv: KeyValue


# --- encoding and checks --------------------------------------------------------------------

_request_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(Request)
_ENCODING_SLACK_BYTES: Final = 64  # msgpack framing per operation, generously


def encode_request(req: Request) -> bytes:
    return _request_encoder.encode(req)


def encode_op(op: WriteOp) -> bytes:
    """The canonical bytes of an operation (the idempotency fingerprint is taken over them)."""
    return _request_encoder.encode(op)


@functools.lru_cache(maxsize=16)
def encoded_bytes_max(limits: KVLimits) -> int:
    """An upper bound on the encoded size of any request that passes ``check_request``."""
    parts = limits.txn_compares_max + 2 * limits.txn_ops_max + 4
    return limits.payload_bytes_max + parts * _ENCODING_SLACK_BYTES + IDEMPOTENCY_KEY_CHARS_MAX


def decode_request(data: bytes, limits: KVLimits | None = None) -> Request:
    """The request in ``data``, checked against ``limits``; raises ``InvalidCommand``."""
    limits = limits or KVLimits()
    if len(data) > encoded_bytes_max(limits):
        raise TooLarge(f"the command is {len(data)} bytes, over {encoded_bytes_max(limits)}")
    try:
        req = _request_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise InvalidCommand(f"malformed command: {exc}") from None
    check_request(req, limits)
    return req


def check_request(req: Request, limits: KVLimits) -> None:
    """Raise ``InvalidCommand`` (``TooLarge`` for a limit) unless ``req`` is well-formed."""
    if not _plain_valid_put(req, limits):  # the common case, in one expression (every node
        _check_request_fully(req, limits)  # checks every entry it applies)


def _check_request_fully(req: Request, limits: KVLimits) -> None:
    if not isinstance(req, Request):
        raise InvalidCommand(f"a request must be a Request, not {type(req).__name__}")
    _check_idempotency_key(req.idempotency_key)
    if type(req.time_ms) is not int or not 0 <= req.time_ms <= INT64_MAX:
        raise InvalidCommand(f"time_ms must be an integer in [0, 2**63), not {req.time_ms!r}")
    payload_bytes = check_op(req.op, limits)
    if payload_bytes > limits.payload_bytes_max:
        raise TooLarge(
            f"the request carries {payload_bytes} bytes of keys and values, "
            f"over the limit of {limits.payload_bytes_max}"
        )


def _plain_valid_put(req: object, limits: KVLimits) -> bool:
    """A valid put. Its payload needs no check of its own: a key and a value within their
    limits are within ``payload_bytes_max`` by its definition."""
    if type(req) is not Request:
        return False
    op, time_ms, idempotency_key = req.op, req.time_ms, req.idempotency_key
    return (
        (idempotency_key is None or _valid_idempotency_key(idempotency_key))
        and type(op) is Put
        and type(time_ms) is int
        and 0 <= time_ms <= INT64_MAX
        and type(op.key) is bytes
        and type(op.value) is bytes
        and 0 < len(op.key) <= limits.key_bytes_max
        and len(op.value) <= limits.value_bytes_max
    )


def check_op(op: object, limits: KVLimits, where: str = "") -> int:
    """Check one write operation; returns the bytes of keys and values it carries."""
    if isinstance(op, Put):
        return _check_put(op, limits, where)
    if isinstance(op, Delete):
        return _check_key(op.key, limits, _join(where, "key"))
    if isinstance(op, Txn):
        return _check_txn(op, limits, where)
    raise InvalidCommand(f"{_label(where)}unknown operation {type(op).__name__}")


def _check_idempotency_key(key: object) -> None:
    if key is None:
        return
    if not isinstance(key, str):
        raise InvalidCommand(f"idempotency_key must be a string, not {type(key).__name__}")
    if not _valid_idempotency_key(key):
        raise InvalidCommand(
            f"idempotency_key must be 1 to {IDEMPOTENCY_KEY_CHARS_MAX} printable ASCII "
            f"characters, not {key[: IDEMPOTENCY_KEY_CHARS_MAX + 1]!r}"
        )


def _valid_idempotency_key(key: object) -> bool:
    """1 to ``IDEMPOTENCY_KEY_CHARS_MAX`` printable ASCII characters (space to tilde)."""
    return (
        type(key) is str
        and 0 < len(key) <= IDEMPOTENCY_KEY_CHARS_MAX
        and key.isascii()
        and key.isprintable()
    )


def _check_put(op: Put, limits: KVLimits, where: str) -> int:
    key_bytes = _check_key(op.key, limits, _join(where, "key"))
    return key_bytes + _check_value(op.value, limits, _join(where, "value"))


def _check_txn(txn: Txn, limits: KVLimits, where: str) -> int:
    total = 0
    for name, items, limit in (
        ("compare", txn.compare, limits.txn_compares_max),
        ("success", txn.success, limits.txn_ops_max),
        ("failure", txn.failure, limits.txn_ops_max),
    ):
        path = _join(where, name)
        if not isinstance(items, tuple | list):
            raise InvalidCommand(f"{path} must be a list, not {type(items).__name__}")
        if len(items) > limit:
            raise TooLarge(f"{path} has {len(items)} entries, over the limit of {limit}")
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]"
            if name == "compare":
                total += _check_compare(item, limits, item_path)
            elif isinstance(item, Get):
                total += _check_key(item.key, limits, f"{item_path}.key")
            elif isinstance(item, Put | Delete):
                total += check_op(item, limits, item_path)
            else:
                raise InvalidCommand(
                    f"{item_path}: an operation must be put, delete or get, "
                    f"not {type(item).__name__}"
                )
    return total


def _check_compare(cmp: object, limits: KVLimits, where: str) -> int:
    if not isinstance(cmp, Compare):
        raise InvalidCommand(f"{where}: a compare must be a Compare, not {type(cmp).__name__}")
    key_bytes = _check_key(cmp.key, limits, f"{where}.key")
    if cmp.target not in COMPARE_TARGETS:
        raise InvalidCommand(
            f"{where}.target must be one of {', '.join(COMPARE_TARGETS)}, not {cmp.target!r}"
        )
    if cmp.op not in COMPARE_OPS:
        raise InvalidCommand(f"{where}.op must be one of {', '.join(COMPARE_OPS)}, not {cmp.op!r}")
    if cmp.target == "value":
        if not isinstance(cmp.value, bytes):
            raise InvalidCommand(f"{where}.value must be bytes for target 'value'")
        return key_bytes + _check_value(cmp.value, limits, f"{where}.value")
    if type(cmp.value) is not int:
        raise InvalidCommand(f"{where}.value must be an integer for target {cmp.target!r}")
    if not INT64_MIN <= cmp.value <= INT64_MAX:
        raise InvalidCommand(f"{where}.value is out of the 64-bit integer range")
    return key_bytes


def _check_key(key: object, limits: KVLimits, where: str) -> int:
    if not isinstance(key, bytes):
        raise InvalidCommand(f"{where} must be bytes, not {type(key).__name__}")
    if not key:
        raise InvalidCommand(f"{where} must not be empty")
    if len(key) > limits.key_bytes_max:
        raise TooLarge(f"{where} is {len(key)} bytes, over the limit of {limits.key_bytes_max}")
    return len(key)


def _check_value(value: object, limits: KVLimits, where: str) -> int:
    if not isinstance(value, bytes):
        raise InvalidCommand(f"{where} must be bytes, not {type(value).__name__}")
    if len(value) > limits.value_bytes_max:
        raise TooLarge(f"{where} is {len(value)} bytes, over the limit of {limits.value_bytes_max}")
    return len(value)


def _join(where: str, field: str) -> str:
    return f"{where}.{field}" if where else field


def _label(where: str) -> str:
    return f"{where}: " if where else ""
