"""A cluster of PeerTransports on 127.0.0.1, for tests and local experiments.

Each node listens on a port the system picks; once all are bound, every node is given every
other node's address. Leaving the ``async with`` block closes them all.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from replog.core.types import Message
from replog.transport.tcp import PeerTransport

__all__ = ["loopback_cluster"]


@contextlib.asynccontextmanager
async def loopback_cluster(
    node_ids: Iterable[int],
    on_message: Callable[[int, Message], None],
    *,
    cluster_id: str = "loopback",
    **options: Any,
) -> AsyncIterator[dict[int, PeerTransport]]:
    """Start one transport per node id; ``on_message(node_id, m)`` sees what each receives.

    ``options`` go to every ``PeerTransport`` (queue bounds, backoff, timeouts).
    """
    transports: dict[int, PeerTransport] = {}
    try:
        for node_id in node_ids:
            transports[node_id] = transport = PeerTransport(
                node_id=node_id,
                cluster_id=cluster_id,
                listen=("127.0.0.1", 0),
                peers={},
                on_message=_bind(on_message, node_id),
                **options,
            )
            await transport.start()
        addresses = {node_id: t.listen_address for node_id, t in transports.items()}
        for transport in transports.values():
            transport.set_peers(addresses)
        yield transports
    finally:
        for transport in transports.values():
            await transport.close()


def _bind(on_message: Callable[[int, Message], None], node_id: int) -> Callable[[Message], None]:
    return lambda m: on_message(node_id, m)
