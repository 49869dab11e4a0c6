"""Values of the client API, and their translation to and from the HTTP API's JSON.

Theory of operation: the wire form of a key or value is text (``key``/``value``) when the bytes
are valid UTF-8, otherwise ``key_base64``/``value_base64`` (docs/http-api.md, "Keys and values").
Everything public here holds bytes; this module alone knows the two wire spellings. Answers are
decoded with msgspec into private wire structs that tolerate unknown fields (a newer server may
add some) and are then turned into the frozen public values. Requests a user writes by hand
(``replog txn FILE``) are parsed strictly: an unknown field or a bad value is a ``ValueError``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias, get_args

import msgspec

__all__ = [
    "Compare",
    "CompareOp",
    "CompareTarget",
    "DeleteOp",
    "DeleteResponse",
    "DeleteResult",
    "FollowerStatus",
    "GetOp",
    "GetResponse",
    "GetResult",
    "Header",
    "KeyValue",
    "NodeStatus",
    "Op",
    "OpResult",
    "PutOp",
    "PutResponse",
    "PutResult",
    "RangeResponse",
    "StatusResponse",
    "TxnResponse",
    "WatchEvent",
    "delete_op",
    "get_op",
    "put_op",
    "to_api_json",
]

CompareTarget: TypeAlias = Literal["value", "version", "mod_revision", "create_revision"]
CompareOp: TypeAlias = Literal["==", "!=", "<", ">"]
_TARGETS: frozenset[str] = frozenset(get_args(CompareTarget))
_OPS: frozenset[str] = frozenset(get_args(CompareOp))


def to_bytes(data: bytes | str, what: str = "key") -> bytes:
    """``data`` as bytes (text is encoded as UTF-8); a clear ``TypeError`` for anything else."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")


def as_text(data: bytes) -> str | None:
    """``data`` decoded as UTF-8, or ``None`` when it is not valid UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def bytes_field(name: str, data: bytes) -> dict[str, str]:
    """The wire spelling of one bytes field: ``{name: text}`` or ``{name_base64: ...}``."""
    text = as_text(data)
    if text is not None:
        return {name: text}
    return {f"{name}_base64": base64.b64encode(data).decode("ascii")}


# --- public values -------------------------------------------------------------------------------


class Header(msgspec.Struct, frozen=True):
    """The cluster header every answer carries: who answered and how far it has got."""

    node_id: str
    leader_id: str | None
    term: int
    commit_index: int
    applied_index: int
    revision: int


class KeyValue(msgspec.Struct, frozen=True):
    """One key and its value, with the store revisions of its creation and latest write."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


class PutResponse(msgspec.Struct, frozen=True):
    header: Header
    kv: KeyValue
    prev_kv: KeyValue | None


class GetResponse(msgspec.Struct, frozen=True):
    """A read of one key; ``kv`` is ``None`` when the key does not exist."""

    header: Header
    kv: KeyValue | None


class DeleteResponse(msgspec.Struct, frozen=True):
    header: Header
    deleted: int
    prev_kv: KeyValue | None


class RangeResponse(msgspec.Struct, frozen=True):
    """Keys under a prefix in byte order; ``count`` matched, ``more`` when cut by the limit."""

    header: Header
    kvs: tuple[KeyValue, ...]
    count: int
    more: bool


class PutResult(msgspec.Struct, frozen=True):
    kv: KeyValue
    prev_kv: KeyValue | None


class DeleteResult(msgspec.Struct, frozen=True):
    deleted: int
    prev_kv: KeyValue | None


class GetResult(msgspec.Struct, frozen=True):
    kv: KeyValue | None


OpResult: TypeAlias = PutResult | DeleteResult | GetResult


class TxnResponse(msgspec.Struct, frozen=True):
    """``succeeded`` says which list ran; ``responses`` has one result per operation run."""

    header: Header
    succeeded: bool
    revision: int
    responses: tuple[OpResult, ...]


class WatchEvent(msgspec.Struct, frozen=True):
    """A ``put`` or ``delete`` of a watched key; a delete's ``kv.mod_revision`` is its revision."""

    type: str
    kv: KeyValue


class NodeStatus(msgspec.Struct, frozen=True):
    id: str
    role: str
    term: int
    leader_id: str | None
    commit_index: int
    applied_index: int
    last_index: int
    snapshot_index: int


class FollowerStatus(msgspec.Struct, frozen=True):
    id: str
    match_index: int
    next_index: int
    lag: int
    state: str


class StatusResponse(msgspec.Struct, frozen=True):
    header: Header
    cluster_id: str
    version: str
    node: NodeStatus
    followers: tuple[FollowerStatus, ...] = ()


# --- transaction requests ------------------------------------------------------------------------


class Compare(msgspec.Struct, frozen=True):
    """One compare of a transaction, e.g. ``Compare("a", "mod_revision", "==", 0)``.

    ``value`` is bytes (or text) for the ``value`` target and an integer for the others.
    """

    key: bytes | str
    target: CompareTarget
    op: CompareOp
    value: bytes | str | int

    def __post_init__(self) -> None:
        to_bytes(self.key)
        if self.target not in _TARGETS:
            raise ValueError(f"compare target must be one of {sorted(_TARGETS)}: {self.target!r}")
        if self.op not in _OPS:
            raise ValueError(f"compare op must be one of {sorted(_OPS)}: {self.op!r}")
        wants_bytes = self.target == "value"
        is_int = isinstance(self.value, int) and not isinstance(self.value, bool)
        if wants_bytes and not isinstance(self.value, bytes | str):
            raise TypeError("a compare of target 'value' needs a bytes or str value")
        if not wants_bytes and not is_int:
            raise TypeError(f"a compare of target {self.target!r} needs an integer value")


class PutOp(msgspec.Struct, frozen=True):
    key: bytes | str
    value: bytes | str


class DeleteOp(msgspec.Struct, frozen=True):
    key: bytes | str


class GetOp(msgspec.Struct, frozen=True):
    key: bytes | str


Op: TypeAlias = PutOp | DeleteOp | GetOp


def put_op(key: bytes | str, value: bytes | str) -> PutOp:
    """A transaction operation that writes ``value`` under ``key``."""
    to_bytes(key)
    to_bytes(value, "value")
    return PutOp(key, value)


def delete_op(key: bytes | str) -> DeleteOp:
    """A transaction operation that deletes ``key`` (a missing key is not an error)."""
    to_bytes(key)
    return DeleteOp(key)


def get_op(key: bytes | str) -> GetOp:
    """A transaction operation that reads ``key``."""
    to_bytes(key)
    return GetOp(key)


def compare_json(compare: Compare) -> dict[str, Any]:
    body: dict[str, Any] = bytes_field("key", to_bytes(compare.key))
    body |= {"target": compare.target, "op": compare.op}
    if isinstance(compare.value, bytes | str):
        body |= bytes_field("value", to_bytes(compare.value, "value"))
    else:
        body["value"] = compare.value
    return body


def op_json(op: Op) -> dict[str, Any]:
    key = bytes_field("key", to_bytes(op.key))
    if isinstance(op, PutOp):
        return {"put": key | bytes_field("value", to_bytes(op.value, "value"))}
    if isinstance(op, DeleteOp):
        return {"delete": key}
    if isinstance(op, GetOp):
        return {"get": key}
    raise TypeError(f"a transaction operation must be PutOp, DeleteOp or GetOp, not {op!r}")


def txn_json(compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> Any:
    """The body of ``POST /v1/txn``."""
    for item in compare:
        if not isinstance(item, Compare):
            raise TypeError(f"a transaction compare must be a Compare, not {item!r}")
    return {
        "compare": [compare_json(item) for item in compare],
        "success": [op_json(op) for op in success],
        "failure": [op_json(op) for op in failure],
    }


# --- parsing a hand-written transaction (strict) ---


class _KeyDoc(msgspec.Struct, forbid_unknown_fields=True):
    key: str | None = None
    key_base64: str | None = None


class _PutDoc(_KeyDoc, forbid_unknown_fields=True):
    value: str | None = None
    value_base64: str | None = None


class _CompareDoc(_KeyDoc, forbid_unknown_fields=True):
    target: str = ""
    op: str = ""
    value: str | int | None = None
    value_base64: str | None = None


class _OpDoc(msgspec.Struct, forbid_unknown_fields=True):
    put: _PutDoc | None = None
    delete: _KeyDoc | None = None
    get: _KeyDoc | None = None


class _TxnDoc(msgspec.Struct, forbid_unknown_fields=True):
    compare: list[_CompareDoc] = msgspec.field(default_factory=list)
    success: list[_OpDoc] = msgspec.field(default_factory=list)
    failure: list[_OpDoc] = msgspec.field(default_factory=list)


def _one_of(name: str, text: str | None, b64: str | None, where: str) -> bytes:
    if (text is None) == (b64 is None):
        raise ValueError(f"{where}: give exactly one of '{name}' and '{name}_base64'")
    if text is not None:
        return text.encode("utf-8")
    assert b64 is not None
    return decode_base64(b64, f"{where}: {name}_base64")


def _parse_op(doc: _OpDoc, where: str) -> Op:
    given = [name for name in ("put", "delete", "get") if getattr(doc, name) is not None]
    if len(given) != 1:
        raise ValueError(f"{where}: an operation is exactly one of put, delete or get")
    if doc.put is not None:
        key = _one_of("key", doc.put.key, doc.put.key_base64, where)
        value = _one_of("value", doc.put.value, doc.put.value_base64, where)
        return PutOp(key, value)
    key_doc = doc.delete if doc.delete is not None else doc.get
    assert key_doc is not None
    key = _one_of("key", key_doc.key, key_doc.key_base64, where)
    return DeleteOp(key) if doc.delete is not None else GetOp(key)


def _parse_compare(doc: _CompareDoc, where: str) -> Compare:
    key = _one_of("key", doc.key, doc.key_base64, where)
    if doc.target not in _TARGETS:
        raise ValueError(f"{where}: target must be one of {sorted(_TARGETS)}")
    if doc.op not in _OPS:
        raise ValueError(f"{where}: op must be one of {sorted(_OPS)}")
    value: bytes | int
    if doc.target == "value":
        if isinstance(doc.value, int):
            raise ValueError(f"{where}: a 'value' compare takes a text or base64 value")
        value = _one_of("value", doc.value, doc.value_base64, where)
    elif isinstance(doc.value, int) and doc.value_base64 is None:
        value = doc.value
    else:
        raise ValueError(f"{where}: a {doc.target!r} compare takes an integer value")
    return Compare(key, doc.target, doc.op, value)  # type: ignore[arg-type]


def parse_txn(text: bytes | str) -> tuple[list[Compare], list[Op], list[Op]]:
    """Parse the JSON body of ``POST /v1/txn`` into (compare, success, failure).

    Raises ``ValueError`` naming what is wrong (bad JSON, unknown field, bad value).
    """
    try:
        doc = msgspec.json.decode(text, type=_TxnDoc)
    except msgspec.DecodeError as error:
        raise ValueError(f"not a valid transaction: {error}") from None
    compares = [_parse_compare(c, f"compare[{i}]") for i, c in enumerate(doc.compare)]
    success = [_parse_op(op, f"success[{i}]") for i, op in enumerate(doc.success)]
    failure = [_parse_op(op, f"failure[{i}]") for i, op in enumerate(doc.failure)]
    return compares, success, failure


# --- decoding answers ----------------------------------------------------------------------------


def decode_base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


class _WireKV(msgspec.Struct, kw_only=True):
    key: str | None = None
    key_base64: str | None = None
    value: str | None = None
    value_base64: str | None = None
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0

    def public(self) -> KeyValue:
        key = _one_of("key", self.key, self.key_base64, "kv")
        if self.value is None and self.value_base64 is None:
            value = b""  # a delete event's kv may leave the (empty) value out
        else:
            value = _one_of("value", self.value, self.value_base64, "kv")
        return KeyValue(key, value, self.create_revision, self.mod_revision, self.version)


def _maybe(kv: _WireKV | None) -> KeyValue | None:
    return None if kv is None else kv.public()


class _WirePut(msgspec.Struct):
    header: Header
    kv: _WireKV
    prev_kv: _WireKV | None = None

    def public(self) -> PutResponse:
        return PutResponse(self.header, self.kv.public(), _maybe(self.prev_kv))


class _WireGet(msgspec.Struct):
    header: Header
    kv: _WireKV | None = None

    def public(self) -> GetResponse:
        return GetResponse(self.header, _maybe(self.kv))


class _WireDelete(msgspec.Struct):
    header: Header
    deleted: int
    prev_kv: _WireKV | None = None

    def public(self) -> DeleteResponse:
        return DeleteResponse(self.header, self.deleted, _maybe(self.prev_kv))


class _WireRange(msgspec.Struct):
    header: Header
    kvs: list[_WireKV]
    count: int
    more: bool

    def public(self) -> RangeResponse:
        kvs = tuple(kv.public() for kv in self.kvs)
        return RangeResponse(self.header, kvs, self.count, self.more)


class _WirePutResult(msgspec.Struct):
    kv: _WireKV
    prev_kv: _WireKV | None = None


class _WireDeleteResult(msgspec.Struct):
    deleted: int
    prev_kv: _WireKV | None = None


class _WireGetResult(msgspec.Struct):
    kv: _WireKV | None = None


class _WireOpResult(msgspec.Struct):
    put: _WirePutResult | None = None
    delete: _WireDeleteResult | None = None
    get: _WireGetResult | None = None

    def public(self) -> OpResult:
        if self.put is not None:
            return PutResult(self.put.kv.public(), _maybe(self.put.prev_kv))
        if self.delete is not None:
            return DeleteResult(self.delete.deleted, _maybe(self.delete.prev_kv))
        if self.get is not None:
            return GetResult(_maybe(self.get.kv))
        raise ValueError("a transaction response is none of put, delete or get")


class _WireTxn(msgspec.Struct):
    header: Header
    succeeded: bool
    revision: int
    responses: list[_WireOpResult]

    def public(self) -> TxnResponse:
        responses = tuple(r.public() for r in self.responses)
        return TxnResponse(self.header, self.succeeded, self.revision, responses)


class _WireEvent(msgspec.Struct):
    type: str
    kv: _WireKV


class _WireErrorBody(msgspec.Struct):
    code: str = "internal"
    message: str = ""
    compact_revision: int | None = None


class WatchLine(msgspec.Struct):
    """One line of a watch stream (private wire form; ``events`` empty on a keepalive).

    A node may end a stream with an error line (``error`` set) instead of events.
    """

    header: Header
    events: list[_WireEvent] = msgspec.field(default_factory=list)
    error: _WireErrorBody | None = None

    def public_events(self) -> list[WatchEvent]:
        return [WatchEvent(event.type, event.kv.public()) for event in self.events]


class WireError(msgspec.Struct):
    """An error answer (private wire form)."""

    error: _WireErrorBody
    header: Header | None = None
    compact_revision: int | None = None


class _WireHeaderOnly(msgspec.Struct):
    header: Header | None = None


_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_PUBLIC_OF: dict[type[Any], type[Any]] = {
    PutResponse: _WirePut,
    GetResponse: _WireGet,
    DeleteResponse: _WireDelete,
    RangeResponse: _WireRange,
    TxnResponse: _WireTxn,
    StatusResponse: StatusResponse,
    WatchLine: WatchLine,
    WireError: WireError,
}


def _decoder(wire_type: type[Any]) -> msgspec.json.Decoder[Any]:
    decoder = _DECODERS.get(wire_type)
    if decoder is None:
        decoder = _DECODERS[wire_type] = msgspec.json.Decoder(wire_type)
    return decoder


def decode_answer(public_type: type[Any], body: bytes) -> Any:
    """Decode a 2xx answer body into ``public_type``; ``ValueError`` when it does not fit."""
    wire_type = _PUBLIC_OF[public_type]
    try:
        wire = _decoder(wire_type).decode(body)
    except msgspec.DecodeError as error:
        raise ValueError(f"unreadable answer: {error}") from None
    return wire.public() if hasattr(wire, "public") else wire


def decode_header(body: bytes) -> Header | None:
    """The header of any JSON answer, or ``None`` if it has none (or is not JSON)."""
    try:
        header: Header | None = _decoder(_WireHeaderOnly).decode(body).header
    except msgspec.DecodeError:
        return None
    return header


# --- encoding values back to the API's JSON (for `--output json`) --------------------------------


def _kv_json(kv: KeyValue | None) -> dict[str, Any] | None:
    if kv is None:
        return None
    return (
        bytes_field("key", kv.key)
        | bytes_field("value", kv.value)
        | {
            "create_revision": kv.create_revision,
            "mod_revision": kv.mod_revision,
            "version": kv.version,
        }
    )


def _result_json(result: OpResult) -> dict[str, Any]:
    if isinstance(result, PutResult):
        return {"put": {"kv": _kv_json(result.kv), "prev_kv": _kv_json(result.prev_kv)}}
    if isinstance(result, DeleteResult):
        return {"delete": {"deleted": result.deleted, "prev_kv": _kv_json(result.prev_kv)}}
    return {"get": {"kv": _kv_json(result.kv)}}


def to_api_json(value: Any) -> Any:
    """A public value as the HTTP API spells it in JSON (bytes as text or base64)."""
    if isinstance(value, KeyValue):
        return _kv_json(value)
    if isinstance(value, WatchEvent):
        return {"type": value.type, "kv": _kv_json(value.kv)}
    if isinstance(value, PutResult | DeleteResult | GetResult):
        return _result_json(value)
    if isinstance(value, msgspec.Struct):
        return {field: to_api_json(getattr(value, field)) for field in value.__struct_fields__}
    if isinstance(value, tuple | list):
        return [to_api_json(item) for item in value]
    return value
