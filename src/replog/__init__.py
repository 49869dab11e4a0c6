"""replog: a replicated log for Python (Raft consensus library and server).

The client is re-exported here (``from replog import Client``) but imported lazily, so that
``import replog.core`` stays free of the client's HTTP dependencies.
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
        ServerError,
        TooLarge,
        Unavailable,
        UnknownOutcome,
    )

__all__ = [
    "AsyncClient",
    "Client",
    "IdempotencyKeyReused",
    "InvalidRequest",
    "KeyNotFound",
    "ReplogClientError",
    "RevisionCompacted",
    "ServerError",
    "TooLarge",
    "Unavailable",
    "UnknownOutcome",
    "__version__",
]
_CLIENT_NAMES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        value = getattr(importlib.import_module("replog.client"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'replog' has no attribute {name!r}")
