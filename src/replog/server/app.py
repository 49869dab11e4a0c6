"""``replog serve``: one node of the replicated KV store, with its HTTP API (and, when
``--listen-rpc`` is set, the binary client protocol of ``replog.server.rpc``).

Start-up: recover the data directory, join the peers, then open the client port. Shutdown on
SIGTERM or SIGINT: a leader hands leadership to the most up-to-date follower first (so clients
see no election timeout), then the node stops, then the client port closes. A storage failure
stops the process with exit code 1; it restarts through recovery.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from replog.server.config import Address, ServerConfig, parse_address
from replog.server.connections import (
    ClientConnections,
    LimitedSite,
    client_connections_limit,
    http_refusal,
    raise_open_files_limit,
)
from replog.server.http import Api, ApiOptions, make_app
from replog.server.node import Node, NodeOptions
from replog.server.rpc import LISTEN_BACKLOG, RpcServer
from replog.statemachines import KVLimits, KVStore
from replog.storage import StorageError

log = logging.getLogger("replog.server")

HTTP_SHUTDOWN_S = 2.0
DRAIN_S = 2.0  # at a clean stop, after the leadership hand-over: for the writes in flight
# What the store accepts when it applies the log: the same on every node, and at least the
# largest request limits `replog serve` allows (the configured limits are checked on entry).
APPLY_LIMITS = KVLimits(key_bytes_max=1 << 20, value_bytes_max=16 << 20, request_bytes_max=32 << 20)
# The cyclic garbage collector's thresholds for a node process (Python's are 700, 10, 10). A node
# holds up to ``entries_ceiling`` log entries, each a tracked object that lives for seconds, so
# with the defaults a busy leader ran a full collection (about 60 ms, all objects scanned) twice
# a second and spent a tenth of its time in the collector. Nearly all garbage here is freed by
# reference counting; the cycles the collector exists for are rare. A larger first threshold
# lets request objects die before a collection sees them, and a full collection now comes after
# about a million new objects instead of 70 thousand.
GC_THRESHOLDS = (10_000, 10, 10)


def run(config: ServerConfig) -> int:
    """Run one node until SIGTERM/SIGINT; return the process exit code."""
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    tune_garbage_collector()
    raise_open_files_limit()
    return _event_loop_runner(config.event_loop)(serve(config))


def tune_garbage_collector() -> None:
    """Set ``GC_THRESHOLDS`` and move the objects of the imported modules out of the
    collector's sight (they live as long as the process). A program that embeds a ``Node``
    can call this too; the library itself leaves the collector alone."""
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()


def _event_loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """uvloop's runner when asked for, or when installed and the choice is "auto"."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.run
    return asyncio.run


def node_options(config: ServerConfig) -> NodeOptions:
    return NodeOptions(
        tick_ms=config.tick_ms,
        heartbeat_ms=config.heartbeat_ms,
        election_timeout_ms=config.election_timeout_ms,
        lease_reads=config.lease_reads,
        clock_drift_ms=config.clock_drift_ms,
        request_timeout_ms=config.request_timeout_ms,
        snapshot_entries=config.snapshot_entries,
        snapshot_keep_entries=config.snapshot_keep_entries,
    )


async def serve(config: ServerConfig, started: asyncio.Event | None = None) -> int:
    """The node's whole life; ``started`` is set once clients can connect (for tests)."""
    kv = KVStore(limits=APPLY_LIMITS)
    node = Node(
        kv,
        name=config.name,
        data_dir=config.data_dir,
        peers={m.name: str(m.peer) for m in config.initial_cluster},
        cluster_id=config.cluster_id,
        listen_peer=str(config.listen_peer),
        options=node_options(config),
        client_url=config.advertise_client,
        join=config.initial_cluster_state == "existing",
        auto_promote=config.auto_promote,
    )
    try:
        await node.start()
    except (StorageError, OSError) as error:
        log.error("node %s cannot start: %s", config.name, error)
        return 1
    limits = KVLimits(
        key_bytes_max=config.key_bytes_max,
        value_bytes_max=config.value_bytes_max,
        request_bytes_max=config.request_bytes_max,
    )
    rpc_address = _advertised_rpc(config)
    options = ApiOptions(config.cluster_id, config.request_bytes_max, limits, rpc_address)
    api = Api(node, kv, options)
    runner = web.AppRunner(
        make_app(api),
        handle_signals=False,
        shutdown_timeout=HTTP_SHUTDOWN_S,
        access_log=logging.getLogger("aiohttp.access") if config.log_level == "debug" else None,
    )
    await runner.setup()
    connections = _client_connections(config, node)
    site = LimitedSite(
        runner,
        config.listen_client.host,
        config.listen_client.port,
        connections=connections,
        refusal=lambda: http_refusal(api.header, connections),
        backlog=LISTEN_BACKLOG,
    )
    try:
        await site.start()
    except OSError as error:
        log.error("cannot listen for clients on %s: %s", config.listen_client, error)
        await node.stop(transfer=False)
        await runner.cleanup()
        return 1
    rpc = RpcServer(api, connections)
    if config.listen_rpc is not None:
        try:
            await rpc.start(config.listen_rpc.host, config.listen_rpc.port)
        except OSError as error:
            log.error("cannot listen for rpc clients on %s: %s", config.listen_rpc, error)
            await node.stop(transfer=False)
            await runner.cleanup()
            return 1
    log.info(
        "node %s serving clients on %s (peers on %s), data in %s",
        config.name,
        config.advertise_client,
        config.advertise_peer,
        config.data_dir,
    )
    if started is not None:
        started.set()
    code = await _until_stopped(node)
    if code == 0:  # a clean stop: the writes taken get their outcome, new ones go elsewhere
        rpc.stop_taking()
        await node.drain(DRAIN_S)
    await node.stop(transfer=False)
    await rpc.close()
    await runner.cleanup()
    log.info("node %s stopped", config.name)
    return code


def _client_connections(config: ServerConfig, node: Node) -> ClientConnections:
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limit, refusing = client_connections_limit(config.client_connections_max, open_files)
    if limit < config.client_connections_max:
        log.warning(
            "node %s: at most %d client connections (client_connections_max is %d, but the "
            "open files limit is %d); raise the hard limit (ulimit -Hn, LimitNOFILE=)",
            config.name,
            limit,
            config.client_connections_max,
            open_files,
        )
    connections = ClientConnections(
        limit,
        config.name,
        refusing_max=refusing,
        on_refused=node.metrics.client_connections_refused.inc,
    )
    node.metrics.client_connections.set_function(lambda: connections.open)
    return connections


def _advertised_rpc(config: ServerConfig) -> str | None:
    """The RPC address clients reach: the listen address, with the advertised client host
    in place of a wildcard."""
    listen = config.listen_rpc
    if listen is None:
        return None
    if listen.is_wildcard:
        host = parse_address(config.advertise_client, "client").host
        return str(Address(host, listen.port))
    return str(listen)


async def _until_stopped(node: Node) -> int:
    """Wait for SIGTERM/SIGINT (exit code 0) or a node failure (exit code 1)."""
    loop = asyncio.get_running_loop()
    requested = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, requested.set)
    stopped = asyncio.ensure_future(node.wait_stopped())
    asked = asyncio.ensure_future(requested.wait())
    try:
        await asyncio.wait({stopped, asked}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        asked.cancel()
    if stopped.done():
        error = stopped.exception()
        log.error("node %s failed: %s", node.name, error)
        return 1
    stopped.cancel()
    return 0
