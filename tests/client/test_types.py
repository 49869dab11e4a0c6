"""The client's values and their JSON spelling: text or base64, strict transaction parsing."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from replog.client import (
    Compare,
    DeleteOp,
    DeleteResult,
    GetOp,
    GetResponse,
    GetResult,
    KeyValue,
    PutOp,
    PutResponse,
    PutResult,
    TxnResponse,
    WatchEvent,
    delete_op,
    get_op,
    parse_txn,
    put_op,
    to_api_json,
)
from replog.client.types import Header, WatchLine, decode_answer, txn_json

HEADER = {
    "node_id": "n1",
    "leader_id": None,
    "term": 2,
    "commit_index": 9,
    "applied_index": 9,
    "revision": 4,
}


@given(key=st.binary(min_size=1, max_size=20), value=st.binary(max_size=20))
def test_key_values_survive_the_json_spelling(key: bytes, value: bytes) -> None:
    kv = KeyValue(key, value, 1, 2, 3)
    spelled = to_api_json(kv)
    assert ("key" in spelled) != ("key_base64" in spelled)
    assert ("value" in spelled) != ("value_base64" in spelled)
    body = json.dumps({"header": HEADER, "kv": spelled, "prev_kv": None}).encode()
    assert decode_answer(PutResponse, body).kv == kv


def test_text_stays_text_and_binary_becomes_base64() -> None:
    assert to_api_json(KeyValue(b"a", "é".encode(), 1, 1, 1))["value"] == "é"
    spelled = to_api_json(KeyValue(b"\xff", b"\x00\xff", 1, 1, 1))
    assert spelled["key_base64"] == "/w==" and spelled["value_base64"] == "AP8="


def test_a_delete_event_may_leave_the_value_out() -> None:
    line = {
        "header": HEADER,
        "events": [{"type": "delete", "kv": {"key": "k", "mod_revision": 7}}],
    }
    (event,) = decode_answer(WatchLine, json.dumps(line).encode()).public_events()
    assert event == WatchEvent("delete", KeyValue(b"k", b"", 0, 7, 0))


def test_answers_tolerate_unknown_fields_but_not_bad_ones() -> None:
    body = {"header": HEADER | {"extra": 1}, "succeeded": True, "revision": 4, "responses": []}
    body["new_field"] = "fine"
    assert decode_answer(TxnResponse, json.dumps(body).encode()).succeeded
    body["revision"] = "four"
    with pytest.raises(ValueError, match="unreadable"):
        decode_answer(TxnResponse, json.dumps(body).encode())
    bad_kv = {"header": HEADER, "kv": {"key": "a", "key_base64": "YQ==", "value": "1"}}
    with pytest.raises(ValueError, match="exactly one"):
        decode_answer(GetResponse, json.dumps(bad_kv).encode())


def test_txn_responses_become_typed_results() -> None:
    kv = {"key": "a", "value": "1", "create_revision": 1, "mod_revision": 1, "version": 1}
    body = {
        "header": HEADER,
        "succeeded": True,
        "revision": 1,
        "responses": [
            {"put": {"kv": kv, "prev_kv": None}},
            {"delete": {"deleted": 0, "prev_kv": None}},
            {"get": {"kv": None}},
        ],
    }
    answer = decode_answer(TxnResponse, json.dumps(body).encode())
    assert answer.header == Header("n1", None, 2, 9, 9, 4)
    put, deleted, got = answer.responses
    assert isinstance(put, PutResult) and put.kv.value == b"1"
    assert deleted == DeleteResult(0, None) and got == GetResult(None)
    assert to_api_json(answer) == body


def test_compare_checks_its_parts() -> None:
    Compare("a", "value", "==", b"x")
    Compare(b"a", "mod_revision", "<", 3)
    with pytest.raises(ValueError, match="target"):
        Compare("a", "size", "==", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="op"):
        Compare("a", "version", ">=", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="integer"):
        Compare("a", "version", "==", "1")
    with pytest.raises(TypeError, match="integer"):
        Compare("a", "version", "==", True)
    with pytest.raises(TypeError, match="bytes or str"):
        Compare("a", "value", "==", 1)
    with pytest.raises(TypeError, match="key"):
        Compare(1, "version", "==", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        put_op("a", 1)  # type: ignore[arg-type]


def test_txn_json_spells_binary_keys_in_base64() -> None:
    body = txn_json(
        [Compare(b"\xff", "value", "!=", b"\x00"), Compare("t", "version", "==", 0)],
        [put_op(b"\xff", "v"), delete_op("d")],
        [get_op("g")],
    )
    assert body == {
        "compare": [
            {"key_base64": "/w==", "target": "value", "op": "!=", "value": "\x00"},
            {"key": "t", "target": "version", "op": "==", "value": 0},
        ],
        "success": [{"put": {"key_base64": "/w==", "value": "v"}}, {"delete": {"key": "d"}}],
        "failure": [{"get": {"key": "g"}}],
    }
    assert parse_txn(json.dumps(body)) == (
        [Compare(b"\xff", "value", "!=", b"\x00"), Compare(b"t", "version", "==", 0)],
        [PutOp(b"\xff", b"v"), DeleteOp(b"d")],
        [GetOp(b"g")],
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[", "not a valid transaction"),
        ('{"succes": []}', "not a valid transaction"),
        ('{"success": [{}]}', "exactly one of put, delete or get"),
        ('{"success": [{"put": {"key": "a"}}]}', "'value'"),
        ('{"success": [{"get": {"key": "a", "key_base64": "YQ=="}}]}', "exactly one"),
        ('{"success": [{"get": {"key_base64": "***"}}]}', "base64"),
        ('{"compare": [{"key": "a", "target": "version", "op": "==", "value": "1"}]}', "integer"),
        ('{"compare": [{"key": "a", "target": "value", "op": "==", "value": 1}]}', "text"),
        ('{"compare": [{"key": "a", "target": "value", "op": "=", "value": "1"}]}', "op"),
        ('{"compare": [{"key": "a", "target": "x", "op": "==", "value": 1}]}', "target"),
    ],
)
def test_parse_txn_names_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_txn(text)


def test_public_values_are_frozen() -> None:
    kv = KeyValue(b"a", b"b", 1, 1, 1)
    with pytest.raises(AttributeError):
        kv.value = b"c"  # type: ignore[misc]
    assert msgspec.structs.replace(kv, value=b"c").value == b"c"
