"""replog: a replicated log for Python (Raft consensus library and server)."""

from __future__ import annotations

__version__ = "0.1.0"
