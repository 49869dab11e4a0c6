"""replog: a replicated log for Python (Raft consensus library and server).

The public names are re-exported here (``from replog import Client, Node``) but imported lazily,
so that ``import replog.core`` stays free of the HTTP and server dependencies.

``Unavailable`` and ``UnknownOutcome`` are the library-wide outcome classes of a failed write:
``Node`` raises them, and the client's errors of the same names are subclasses of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from replog.client import (
        AsyncClient,
        Client,
        IdempotencyKeyReused,
        InvalidRequest,
        KeyNotFound,
        ReplogClientError,
        RevisionCompacted,
        RpcClient,
        ServerError,
        TooLarge,
    )
    from replog.errors import ReplogError, Unavailable, UnknownOutcome
    from replog.server.node import Node, NodeOptions, NodeStopped
    from replog.statemachines.base import StateMachine

_HOMES = {
    "replog.client": (
        "AsyncClient",
        "Client",
        "IdempotencyKeyReused",
        "InvalidRequest",
        "KeyNotFound",
        "ReplogClientError",
        "RevisionCompacted",
        "RpcClient",
        "ServerError",
        "TooLarge",
    ),
    "replog.errors": ("ReplogError", "Unavailable", "UnknownOutcome"),
    "replog.server.node": ("Node", "NodeOptions", "NodeStopped"),
    "replog.statemachines.base": ("StateMachine",),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [  # noqa: RUF022 (grouped by home module)
    "AsyncClient",
    "Client",
    "IdempotencyKeyReused",
    "InvalidRequest",
    "KeyNotFound",
    "ReplogClientError",
    "RevisionCompacted",
    "RpcClient",
    "ServerError",
    "TooLarge",
    "ReplogError",
    "Unavailable",
    "UnknownOutcome",
    "Node",
    "NodeOptions",
    "NodeStopped",
    "StateMachine",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'replog' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
