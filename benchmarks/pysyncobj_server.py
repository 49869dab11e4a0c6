"""A small HTTP front over a PySyncObj replicated dict, so ``replog bench --target pysyncobj``
can drive PySyncObj with the same generator as replog and etcd.

One process is one PySyncObj node plus an aiohttp server:

* ``PUT /kv/{key}``: the body is the value; a replicated ``set`` (any node: PySyncObj followers
  forward commands to the leader). 200 once committed and applied on this node.
* ``GET /kv/{key}?consistency=linearizable``: a replicated ``get`` that goes through the Raft
  log (PySyncObj has no read index or lease read, so this is its linearizable read; it costs a
  log entry). ``consistency=stale``: this node's dict, at once.
* ``GET /status``: ``{"is_leader": bool, ...}``.

Durability: with ``--journal-dir`` the node uses PySyncObj's on-disk journal (``journalFile``,
an mmap'd file) and full dump file. PySyncObj never fsyncs nor msyncs that journal while it
runs (it flushes only when the node is destroyed), so an acknowledged write survives a process
crash but not a power cut; replog and etcd fsync before acknowledging. PySyncObj serializes its
commands with pickle internally; this front only passes it bytes and strings.

    python benchmarks/pysyncobj_server.py --self 127.0.0.1:7001 \
        --partners 127.0.0.1:7002,127.0.0.1:7003 --http 127.0.0.1:8001 --journal-dir /tmp/p1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path
from typing import Any

from aiohttp import web
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

REQUEST_TIMEOUT_S = 10.0
VALUE_MAX_BYTES = 1024 * 1024


class ReplicatedDict(SyncObj):  # type: ignore[misc]
    def __init__(self, self_address: str, partners: list[str], conf: SyncObjConf) -> None:
        super().__init__(self_address, partners, conf)
        self.data: dict[str, bytes] = {}

    @replicated  # type: ignore[misc]
    def set(self, key: str, value: bytes) -> None:
        self.data[key] = value

    @replicated  # type: ignore[misc]
    def get(self, key: str) -> bytes | None:
        return self.data.get(key)


def _error(status: int, code: str) -> web.Response:
    body = {"error": {"code": code, "message": code}}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


async def _replicated_call(node: ReplicatedDict, method: str, *args: Any) -> tuple[Any, int]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[tuple[Any, int]] = loop.create_future()

    def done(result: Any, error: int) -> None:  # runs on PySyncObj's thread
        loop.call_soon_threadsafe(lambda: future.done() or future.set_result((result, error)))

    getattr(node, method)(*args, callback=done)
    return await asyncio.wait_for(future, REQUEST_TIMEOUT_S)


def make_app(node: ReplicatedDict) -> web.Application:
    async def put(request: web.Request) -> web.Response:
        value = await request.read()
        if len(value) > VALUE_MAX_BYTES:
            return _error(400, "too_large")
        try:
            _, error = await _replicated_call(node, "set", request.match_info["key"], value)
        except TimeoutError:
            return _error(503, "unknown_outcome")
        if error != FAIL_REASON.SUCCESS:
            return _error(503, f"fail_reason_{error}")
        return web.json_response({"ok": True})

    async def get(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        consistency = request.query.get("consistency", "linearizable")
        if consistency == "stale":
            value = node.data.get(key)
        else:
            try:
                value, error = await _replicated_call(node, "get", key)
            except TimeoutError:
                return _error(503, "timeout")
            if error != FAIL_REASON.SUCCESS:
                return _error(503, f"fail_reason_{error}")
        if value is None:
            return _error(404, "key_not_found")
        return web.Response(body=value)

    async def status(request: web.Request) -> web.Response:
        raw = node.getStatus()
        return web.json_response(
            {"is_leader": bool(node._isLeader()), "leader": str(raw.get("leader"))}
        )

    app = web.Application(client_max_size=VALUE_MAX_BYTES + 1024)
    app.router.add_put("/kv/{key}", put)
    app.router.add_get("/kv/{key}", get)
    app.router.add_get("/status", status)
    return app


async def serve(args: argparse.Namespace) -> None:
    options: dict[str, Any] = {
        "dynamicMembershipChange": False,
        "appendEntriesUseBatch": not args.no_batch,
    }
    if args.journal_dir is not None:
        journal_dir = Path(args.journal_dir)
        journal_dir.mkdir(parents=True, exist_ok=True)
        options["journalFile"] = str(journal_dir / "journal.bin")
        options["fullDumpFile"] = str(journal_dir / "dump.bin")
    conf = SyncObjConf(**options)
    partners = [p for p in args.partners.split(",") if p]
    node = ReplicatedDict(args.self_address, partners, conf)
    runner = web.AppRunner(make_app(node), access_log=None)
    await runner.setup()
    host, port = args.http.rsplit(":", 1)
    await web.TCPSite(runner, host, int(port)).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    node.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--self", dest="self_address", required=True, help="HOST:PORT (Raft)")
    parser.add_argument("--partners", required=True, help="HOST:PORT,... of the other nodes")
    parser.add_argument("--http", required=True, help="HOST:PORT of the HTTP front")
    parser.add_argument("--journal-dir", default=None, help="on-disk journal (default: memory)")
    parser.add_argument(
        "--no-batch",
        action="store_true",
        help="appendEntriesUseBatch=False: send each command at once instead of batching "
        "commands until the next append period (100 ms by default)",
    )
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
