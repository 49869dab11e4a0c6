"""State machines for the replicated log: the interface and the KV store built on it.

* ``StateMachine``: what the log applies committed commands to.
* ``KVStore``: the etcd-like key-value store (revisions, transactions, idempotent writes,
  watch history), with its commands (``Request``, ``Put``, ``Delete``, ``Txn``, ...), results,
  ``KVLimits`` and the JSON shapes of docs/http-api.md (``kv_to_json``, ``txn_from_json``, ...).
"""

from replog.statemachines.base import StateMachine
from replog.statemachines.commands import (
    ApplyResult,
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
    Request,
    TooLarge,
    Txn,
    TxnResult,
    check_request,
    decode_request,
    encode_request,
)
from replog.statemachines.kv import Compacted, InvalidSnapshot, KVStore
from replog.statemachines.kvjson import (
    bytes_from_json,
    decode_base64,
    event_to_json,
    kv_to_json,
    result_to_json,
    txn_from_json,
)

__all__ = [
    "ApplyResult",
    "Compacted",
    "Compare",
    "Delete",
    "DeleteResult",
    "ErrorResult",
    "Event",
    "Get",
    "GetResult",
    "InvalidCommand",
    "InvalidSnapshot",
    "KVLimits",
    "KVStore",
    "KeyValue",
    "Put",
    "PutResult",
    "Request",
    "StateMachine",
    "TooLarge",
    "Txn",
    "TxnResult",
    "bytes_from_json",
    "check_request",
    "decode_base64",
    "decode_request",
    "encode_request",
    "event_to_json",
    "kv_to_json",
    "result_to_json",
    "txn_from_json",
]
