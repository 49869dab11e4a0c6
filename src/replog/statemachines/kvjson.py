"""JSON shapes of the KV store's values, as docs/http-api.md defines them (no HTTP code here).

Bytes travel as text when they are valid UTF-8 (``key``, ``value``) and as standard base64 with
padding otherwise (``key_base64``, ``value_base64``); a request gives exactly one of the two.
``txn_from_json`` is strict: unknown fields, wrong types and broken limits raise
``InvalidCommand`` (``TooLarge`` for limits) with the path of the offending field, for example
``success[2].put.value_base64: not valid base64``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from replog.statemachines.commands import (
    COMPARE_OPS,
    COMPARE_TARGETS,
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
    Put,
    PutResult,
    TooLarge,
    Txn,
    TxnOp,
    TxnResult,
    check_op,
)

JSONObject = dict[str, Any]
_MISSING: Any = object()  # a field that is absent (JSON null is None)

_TXN_FIELDS = ("compare", "success", "failure")
_COMPARE_FIELDS = frozenset({"key", "key_base64", "target", "op", "value", "value_base64"})
_KEY_FIELDS = frozenset({"key", "key_base64"})
_PUT_FIELDS = frozenset({"key", "key_base64", "value", "value_base64"})


# --- values to JSON -------------------------------------------------------------------------


def bytes_to_json(data: bytes, name: str) -> JSONObject:
    """``{name: text}`` when ``data`` is valid UTF-8, else ``{name_base64: base64}``."""
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode("ascii")}


def kv_to_json(kv: KeyValue) -> JSONObject:
    return {
        **bytes_to_json(kv.key, "key"),
        **bytes_to_json(kv.value, "value"),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    }


def _maybe_kv(kv: KeyValue | None) -> JSONObject | None:
    return None if kv is None else kv_to_json(kv)


def result_to_json(result: PutResult | DeleteResult | TxnResult | ErrorResult) -> JSONObject:
    """The body fields (besides the header) of the answer to a write."""
    if isinstance(result, PutResult):
        return {"kv": kv_to_json(result.kv), "prev_kv": _maybe_kv(result.prev_kv)}
    if isinstance(result, DeleteResult):
        return {"deleted": result.deleted, "prev_kv": _maybe_kv(result.prev_kv)}
    if isinstance(result, TxnResult):
        return {
            "succeeded": result.succeeded,
            "revision": result.revision,
            "responses": [_response_to_json(r) for r in result.responses],
        }
    return {"error": {"code": result.code, "message": result.message}}


def _response_to_json(response: PutResult | DeleteResult | GetResult) -> JSONObject:
    if isinstance(response, PutResult):
        return {"put": result_to_json(response)}
    if isinstance(response, DeleteResult):
        return {"delete": result_to_json(response)}
    return {"get": {"kv": _maybe_kv(response.kv)}}


def event_to_json(event: Event) -> JSONObject:
    return {"type": event.type, "kv": kv_to_json(event.kv)}


# --- JSON to a transaction ------------------------------------------------------------------


def txn_from_json(obj: object, limits: KVLimits | None = None) -> Txn:
    """The transaction a ``POST /v1/txn`` body describes; raises ``InvalidCommand``."""
    limits = limits or KVLimits()
    body = _object(obj, "the transaction", frozenset(_TXN_FIELDS))
    lists = {name: _list(body.get(name, []), name) for name in _TXN_FIELDS}
    _check_lengths(lists, limits)
    txn = Txn(
        compare=tuple(
            _compare_from_json(item, f"compare[{i}]") for i, item in enumerate(lists["compare"])
        ),
        success=tuple(
            _op_from_json(item, f"success[{i}]") for i, item in enumerate(lists["success"])
        ),
        failure=tuple(
            _op_from_json(item, f"failure[{i}]") for i, item in enumerate(lists["failure"])
        ),
    )
    payload_bytes = check_op(txn, limits)
    if payload_bytes > limits.payload_bytes_max:
        raise TooLarge(
            f"the transaction carries {payload_bytes} bytes of keys and values, "
            f"over the limit of {limits.payload_bytes_max}"
        )
    return txn


def bytes_from_json(body: JSONObject, name: str, where: str, *, required: bool = True) -> bytes:
    """The bytes given as ``name`` (UTF-8 text) or ``name_base64``; exactly one of the two.
    Returns b"" when neither is given and ``required`` is false."""
    encoded_name = f"{name}_base64"
    if name in body and encoded_name in body:
        raise InvalidCommand(f"{where}: give {name} or {encoded_name}, not both")
    if name not in body and encoded_name not in body:
        if required:
            raise InvalidCommand(f"{where}: {name} (or {encoded_name}) is required")
        return b""
    if name in body:
        text = body[name]
        if not isinstance(text, str):
            raise InvalidCommand(f"{where}.{name} must be a string, not {_kind(text)}")
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidCommand(f"{where}.{name} is not valid Unicode text") from None
    return decode_base64(body[encoded_name], f"{where}.{encoded_name}")


def decode_base64(encoded: object, where: str) -> bytes:
    """Standard base64 with padding, strictly; raises ``InvalidCommand`` naming ``where``."""
    if not isinstance(encoded, str):
        raise InvalidCommand(f"{where} must be a string, not {_kind(encoded)}")
    try:
        return base64.b64decode(encoded.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise InvalidCommand(f"{where}: not valid base64 (standard alphabet, padded)") from None


def _check_lengths(lists: dict[str, list[object]], limits: KVLimits) -> None:
    """Refuse an oversized list before building anything from it."""
    for name, items in lists.items():
        limit = limits.txn_compares_max if name == "compare" else limits.txn_ops_max
        if len(items) > limit:
            raise TooLarge(f"{name} has {len(items)} entries, over the limit of {limit}")


def _compare_from_json(item: object, where: str) -> Compare:
    body = _object(item, where, _COMPARE_FIELDS)
    key = bytes_from_json(body, "key", where)
    target = _choice(body.get("target", _MISSING), f"{where}.target", COMPARE_TARGETS)
    op = _choice(body.get("op", _MISSING), f"{where}.op", COMPARE_OPS)
    value: bytes | int
    if target == "value":
        value = bytes_from_json(body, "value", where)
    else:
        if "value_base64" in body:
            raise InvalidCommand(f"{where}: value_base64 is only for target 'value'")
        raw = body.get("value", _MISSING)
        if type(raw) is not int:
            raise InvalidCommand(
                f"{where}.value must be an integer for target {target!r}, not {_kind(raw)}"
            )
        value = raw
    return Compare(key=key, target=target, op=op, value=value)


def _op_from_json(item: object, where: str) -> TxnOp:
    body = _object(item, where, frozenset({"put", "delete", "get"}))
    if len(body) != 1:
        raise InvalidCommand(f"{where} must hold exactly one of put, delete, get")
    ((kind, inner),) = body.items()
    path = f"{where}.{kind}"
    if kind == "put":
        fields = _object(inner, path, _PUT_FIELDS)
        return Put(
            key=bytes_from_json(fields, "key", path), value=bytes_from_json(fields, "value", path)
        )
    fields = _object(inner, path, _KEY_FIELDS)
    key = bytes_from_json(fields, "key", path)
    return Delete(key=key) if kind == "delete" else Get(key=key)


def _object(obj: object, where: str, allowed: frozenset[str]) -> JSONObject:
    if not isinstance(obj, dict):
        raise InvalidCommand(f"{where} must be a JSON object, not {_kind(obj)}")
    for name in obj:
        if not isinstance(name, str) or name not in allowed:
            raise InvalidCommand(
                f"{where}: unknown field {name!r} (allowed: {', '.join(sorted(allowed))})"
            )
    return obj


def _list(obj: object, where: str) -> list[object]:
    if not isinstance(obj, list):
        raise InvalidCommand(f"{where} must be a JSON array, not {_kind(obj)}")
    return obj


def _choice(value: object, where: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        shown = "missing" if value is _MISSING else repr(value)
        raise InvalidCommand(f"{where} must be one of {', '.join(allowed)}, not {shown}")
    return value


def _kind(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is _MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
