"""Target adapters: how one benchmark operation becomes an HTTP request to each system.

An adapter turns (operation, key, value) into (method, path, body, headers) and an answer
(status, body) into success or an error kind, so the same generator drives every system:

* ``replog``: this project's API (docs/http-api.md): ``PUT /v1/kv/{key}`` with the raw value;
  ``GET /v1/kv/{key}?consistency=linearizable|stale``.
* ``etcd``: etcd v3's JSON gateway: ``POST /v3/kv/put`` ``{"key": b64, "value": b64}`` and
  ``POST /v3/kv/range`` with ``serializable`` false (linearizable) or true (stale).
* ``pysyncobj``: the small HTTP front of ``benchmarks/pysyncobj_server.py``: ``PUT /kv/{key}``
  and ``GET /kv/{key}?consistency=...`` over a PySyncObj replicated dict.

Error kinds are short stable strings: ``http_<status>:<code>`` from the answer, or the name of
the transport failure (``timeout``, ``connection``).
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from dataclasses import dataclass
from typing import Literal

from replog.bench.workloads import Op

__all__ = ["TARGETS", "Request", "Target", "TargetName", "adapter"]

TargetName = Literal["replog", "etcd", "pysyncobj"]
TARGETS: tuple[TargetName, ...] = ("replog", "etcd", "pysyncobj")
ERROR_CODE_MAX_CHARS = 40
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]


@dataclass(frozen=True)
class StatusProbe:
    """How to ask a node whether it leads: method, path, body."""

    method: str
    path: str
    body: bytes | None


class Target:
    """Base adapter; subclasses fill ``request``, ``leader_probe`` and ``is_leader``."""

    name: TargetName = "replog"

    def request(self, op: Op, key: str, value: bytes) -> Request:
        raise NotImplementedError

    def error_kind(self, status: int, body: bytes) -> str | None:
        """None when the answer is a success; else a short error kind."""
        if status == 200:
            return None
        code = "error"
        try:
            document = json.loads(body)
            error = document.get("error") if isinstance(document, dict) else None
            if isinstance(error, dict):
                code = str(error.get("code", "error"))
            elif isinstance(error, str):
                code = error.split(":")[0]
        except ValueError:
            pass
        return f"http_{status}:{code[:ERROR_CODE_MAX_CHARS]}"

    def leader_probe(self) -> StatusProbe:
        raise NotImplementedError

    def is_leader(self, body: bytes) -> bool:
        raise NotImplementedError


def _path_key(key: str) -> str:
    return urllib.parse.quote(key, safe="")


class ReplogTarget(Target):
    name: TargetName = "replog"

    def request(self, op: Op, key: str, value: bytes) -> Request:
        path = "/v1/kv/" + _path_key(key)
        if op == "put":
            return Request("PUT", path, value, {})
        consistency = "stale" if op == "stale-get" else "linearizable"
        return Request("GET", f"{path}?consistency={consistency}", None, {})

    def leader_probe(self) -> StatusProbe:
        return StatusProbe("GET", "/v1/status", None)

    def is_leader(self, body: bytes) -> bool:
        return bool(json.loads(body)["node"]["role"] == "leader")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class EtcdTarget(Target):
    name: TargetName = "etcd"

    def request(self, op: Op, key: str, value: bytes) -> Request:
        if op == "put":
            body = {"key": _b64(key.encode()), "value": _b64(value)}
            return Request("POST", "/v3/kv/put", json.dumps(body).encode(), _JSON)
        body_range = {"key": _b64(key.encode()), "serializable": op == "stale-get"}
        return Request("POST", "/v3/kv/range", json.dumps(body_range).encode(), _JSON)

    def leader_probe(self) -> StatusProbe:
        return StatusProbe("POST", "/v3/maintenance/status", b"{}")

    def is_leader(self, body: bytes) -> bool:
        document = json.loads(body)
        return bool(document["header"]["member_id"] == document["leader"])


class PySyncObjTarget(Target):
    name: TargetName = "pysyncobj"

    def request(self, op: Op, key: str, value: bytes) -> Request:
        path = "/kv/" + _path_key(key)
        if op == "put":
            return Request("PUT", path, value, {})
        consistency = "stale" if op == "stale-get" else "linearizable"
        return Request("GET", f"{path}?consistency={consistency}", None, {})

    def leader_probe(self) -> StatusProbe:
        return StatusProbe("GET", "/status", None)

    def is_leader(self, body: bytes) -> bool:
        return bool(json.loads(body)["is_leader"])


_ADAPTERS: dict[str, type[Target]] = {
    "replog": ReplogTarget,
    "etcd": EtcdTarget,
    "pysyncobj": PySyncObjTarget,
}


def adapter(name: str) -> Target:
    try:
        return _ADAPTERS[name]()
    except KeyError:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {name!r}") from None
