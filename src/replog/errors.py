"""The errors a caller of replog handles, whether it embeds a ``Node`` or uses the ``Client``.

The two outcomes of a failed write are distinct on purpose: ``Unavailable`` means the write was
certainly not applied (safe to retry anywhere); ``UnknownOutcome`` means it was proposed and may
or may not have been applied (retry only with the same idempotency key, or check first). The
client's errors of the same names are subclasses of these.
"""

from __future__ import annotations

from replog.core.errors import ReplogError


class Unavailable(ReplogError):
    """No leader or no quorum, or the node is stopping: the request was certainly not applied."""


class UnknownOutcome(ReplogError):
    """The command was proposed but its outcome is unknown: it may or may not be applied."""


__all__ = ["ReplogError", "Unavailable", "UnknownOutcome"]
