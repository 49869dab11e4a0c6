"""The JSON shapes of docs/http-api.md: values out (text or base64), transactions in (strict)."""

from __future__ import annotations

import json

import pytest

from replog.statemachines import (
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
    TxnResult,
    event_to_json,
    kv_to_json,
    result_to_json,
    txn_from_json,
)

KV = KeyValue(b"config/a", b"text", 5, 9, 3)


def test_kv_to_json_uses_text_when_it_can() -> None:
    assert kv_to_json(KV) == {
        "key": "config/a",
        "value": "text",
        "create_revision": 5,
        "mod_revision": 9,
        "version": 3,
    }
    assert list(kv_to_json(KV)) == ["key", "value", "create_revision", "mod_revision", "version"]


def test_kv_to_json_uses_base64_for_bytes_that_are_not_utf8() -> None:
    body = kv_to_json(KeyValue(b"\xff\x00", "caf\u00e9".encode(), 1, 1, 1))
    assert body["key_base64"] == "/wA=" and "key" not in body
    assert body["value"] == "caf\u00e9" and "value_base64" not in body
    assert kv_to_json(KeyValue(b"k", b"\xc3", 1, 1, 1))["value_base64"] == "ww=="


def test_result_shapes() -> None:
    put = PutResult(9, KV, None)
    gone = DeleteResult(10, 1, KV)
    assert result_to_json(put) == {"kv": kv_to_json(KV), "prev_kv": None}
    assert result_to_json(gone) == {"deleted": 1, "prev_kv": kv_to_json(KV)}
    assert result_to_json(DeleteResult(10, 0, None)) == {"deleted": 0, "prev_kv": None}
    txn = TxnResult(12, True, (put, gone, GetResult(None), GetResult(KV)))
    assert result_to_json(txn) == {
        "succeeded": True,
        "revision": 12,
        "responses": [
            {"put": {"kv": kv_to_json(KV), "prev_kv": None}},
            {"delete": {"deleted": 1, "prev_kv": kv_to_json(KV)}},
            {"get": {"kv": None}},
            {"get": {"kv": kv_to_json(KV)}},
        ],
    }
    assert result_to_json(ErrorResult("idempotency_key_reused", "no")) == {
        "error": {"code": "idempotency_key_reused", "message": "no"}
    }
    json.dumps(result_to_json(txn))  # plain JSON values only


def test_event_to_json() -> None:
    gone = Event("delete", KeyValue(b"a", b"", 0, 7, 0))
    assert event_to_json(gone) == {
        "type": "delete",
        "kv": {"key": "a", "value": "", "create_revision": 0, "mod_revision": 7, "version": 0},
    }


def test_txn_from_json_reads_the_documented_example() -> None:
    body = json.loads(
        """{"compare": [{"key": "a", "target": "version", "op": "==", "value": 0}],
            "success": [{"put": {"key": "a", "value": "1"}}, {"get": {"key": "b"}}],
            "failure": [{"get": {"key": "a"}}]}"""
    )
    assert txn_from_json(body) == Txn(
        (Compare(b"a", "version", "==", 0),),
        (Put(b"a", b"1"), Get(b"b")),
        (Get(b"a"),),
    )


def test_txn_from_json_takes_base64_and_empty_lists() -> None:
    body = {
        "compare": [{"key_base64": "/w==", "target": "value", "op": "<", "value_base64": "AAE="}],
        "success": [
            {"delete": {"key_base64": "/w=="}},
            {"put": {"key": "k", "value_base64": ""}},
        ],
    }
    assert txn_from_json(body) == Txn(
        (Compare(b"\xff", "value", "<", b"\x00\x01"),),
        (Delete(b"\xff"), Put(b"k", b"")),
        (),
    )
    assert txn_from_json({}) == Txn()
    assert txn_from_json({"compare": [{"key": "a", "target": "value", "op": "==", "value": "x"}]})


GOOD_COMPARE = {"key": "a", "target": "version", "op": "==", "value": 0}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "the transaction must be a JSON object, not an array"),
        ({"compares": []}, "the transaction: unknown field 'compares'"),
        ({"success": {}}, "success must be a JSON array, not an object"),
        ({"compare": [1]}, r"compare\[0\] must be a JSON object, not a number"),
        ({"compare": [{**GOOD_COMPARE, "extra": 1}]}, r"compare\[0\]: unknown field 'extra'"),
        ({"compare": [{**GOOD_COMPARE, "target": "age"}]}, r"compare\[0\].target must be one"),
        ({"compare": [{**GOOD_COMPARE, "op": ">="}]}, r"compare\[0\].op must be one of"),
        ({"compare": [{**GOOD_COMPARE, "op": None}]}, r"compare\[0\].op .* not None"),
        ({"compare": [{"key": "a", "op": "=="}]}, r"compare\[0\].target .* not missing"),
        ({"compare": [{"key": "a", "op": "==", "target": "version"}]}, "integer .*, not missing"),
        ({"compare": [{**GOOD_COMPARE, "value": "0"}]}, r"compare\[0\].value must be an integer"),
        ({"compare": [{**GOOD_COMPARE, "value": True}]}, "not a boolean"),
        ({"compare": [{**GOOD_COMPARE, "value": 1.5}]}, "not a number"),
        ({"compare": [{**GOOD_COMPARE, "value": 2**64}]}, r"compare\[0\].value is out of"),
        (
            {"compare": [{**GOOD_COMPARE, "value_base64": "AA=="}]},
            "value_base64 is only for target 'value'",
        ),
        (
            {"compare": [{**GOOD_COMPARE, "target": "value", "value": 3}]},
            r"compare\[0\].value must be a string, not a number",
        ),
        (
            {"compare": [{**GOOD_COMPARE, "target": "value", "value": "a", "value_base64": ""}]},
            r"compare\[0\]: give value or value_base64, not both",
        ),
        ({"compare": [{"target": "version", "op": "==", "value": 0}]}, r"key_base64\) is required"),
        ({"success": [{}]}, r"success\[0\] must hold exactly one of put, delete, get"),
        ({"success": [{"put": {}, "get": {}}]}, r"success\[0\] must hold exactly one"),
        ({"success": [{"move": {}}]}, r"success\[0\]: unknown field 'move'"),
        ({"success": [{"put": {"key": "a"}}]}, r"success\[0\].put: value .* is required"),
        ({"success": [{"put": {"key": "a", "value": None}}]}, r"put.value must be a string"),
        ({"failure": [{"get": {"key": "a", "value": "x"}}]}, r"failure\[0\].get: unknown field"),
        ({"failure": [{"delete": {"key": ""}}]}, r"failure\[0\].key must not be empty"),
        ({"failure": [{"delete": {"key": "a", "key_base64": "YQ=="}}]}, "not both"),
        ({"failure": [{"get": {"key_base64": "YQ"}}]}, r"failure\[0\].get.key_base64: not valid"),
        ({"failure": [{"get": {"key_base64": "Y Q=="}}]}, "not valid base64"),
        ({"failure": [{"get": {"key_base64": "YQ-_"}}]}, "not valid base64"),
        ({"failure": [{"get": {"key_base64": "\u00e9"}}]}, "not valid base64"),
        ({"failure": [{"get": {"key_base64": 7}}]}, "key_base64 must be a string, not a number"),
        ({"failure": [{"get": {"key": "\ud800"}}]}, "not valid Unicode text"),
        ({"failure": [{"get": "a"}]}, r"failure\[0\].get must be a JSON object, not a string"),
    ],
)
def test_txn_from_json_refuses_precisely(body: object, message: str) -> None:
    with pytest.raises(InvalidCommand, match=message):
        txn_from_json(body)


LIMITS = KVLimits(key_bytes_max=4, value_bytes_max=8, request_bytes_max=20, txn_ops_max=2)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"success": [{"get": {"key": "abcde"}}]}, r"success\[0\].key is 5 bytes"),
        ({"success": [{"put": {"key": "a", "value": "x" * 9}}]}, r"success\[0\].value is 9"),
        ({"failure": [{"get": {"key": "a"}}] * 3}, "failure has 3 entries, over the limit of 2"),
        (
            {"success": [{"put": {"key": "abcd", "value": "x" * 8}}] * 2},
            "carries 24 bytes",
        ),
    ],
)
def test_txn_from_json_enforces_limits(body: object, message: str) -> None:
    with pytest.raises(TooLarge, match=message):
        txn_from_json(body, LIMITS)
