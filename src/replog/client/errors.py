"""The client's typed errors, one class per error code of the HTTP API (docs/http-api.md).

Every error carries the API's ``code``, the HTTP ``status`` (``None`` when no node answered), a
human-readable ``message``, the cluster ``header`` of the answer (when there was one) and the
``endpoint`` that produced it; ``str(error)`` reads ``"<code>: <message> (<endpoint>)"``.
``Unavailable`` and ``UnknownOutcome`` are also the library-wide classes of ``replog.errors``, so
one ``except`` clause serves a caller that embeds a node and one that uses the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replog import errors as replog_errors
from replog.core.errors import ReplogError

if TYPE_CHECKING:
    from replog.client.types import Header

__all__ = [
    "IdempotencyKeyReused",
    "InvalidRequest",
    "KeyNotFound",
    "ReplogClientError",
    "RevisionCompacted",
    "ServerError",
    "TooLarge",
    "Unavailable",
    "UnknownOutcome",
    "error_from_answer",
]


class ReplogClientError(ReplogError):
    """Base class of every error the client raises for a failed request."""

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        header: Header | None = None,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.status = status
        self.header = header
        self.endpoint = endpoint

    def __str__(self) -> str:
        where = f" ({self.endpoint})" if self.endpoint else ""
        return f"{self.code}: {self.message}{where}"


class InvalidRequest(ReplogClientError):
    """400: the request is malformed or has a bad value; retrying it cannot help."""

    default_code = "invalid_request"


class TooLarge(InvalidRequest):
    """400: a key, value, body or transaction is over the server's limit."""

    default_code = "too_large"


class KeyNotFound(ReplogClientError):
    """404 ``key_not_found`` (``Client.get`` answers ``None`` instead of raising this)."""

    default_code = "key_not_found"


class IdempotencyKeyReused(ReplogClientError):
    """409: the same ``Idempotency-Key`` was already used for a different request."""

    default_code = "idempotency_key_reused"


class RevisionCompacted(ReplogClientError):
    """410: a watch asked for history older than the node keeps (``compact_revision``)."""

    default_code = "revision_compacted"

    def __init__(
        self,
        message: str,
        *,
        compact_revision: int,
        code: str | None = None,
        status: int | None = None,
        header: Header | None = None,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, header=header, endpoint=endpoint)
        self.compact_revision = compact_revision


class Unavailable(ReplogClientError, replog_errors.Unavailable):
    """No leader or no quorum (503 ``unavailable``), or no endpoint reachable (``unreachable``).

    A write that fails with this error was certainly not applied.
    """

    default_code = "unavailable"


class UnknownOutcome(ReplogClientError, replog_errors.UnknownOutcome):
    """A write may or may not have been applied, and retries did not settle it in time.

    Retrying it again with the same idempotency key is safe.
    """

    default_code = "unknown_outcome"


class MembershipRefused(ReplogClientError):
    """404/409: a membership request the leader refused, with a reason in ``code``:
    ``member_not_found``, ``member_exists``, ``membership_change_pending``,
    ``would_lose_quorum`` or ``member_not_caught_up``."""

    default_code = "membership_change_pending"


class ServerError(ReplogClientError):
    """500 ``internal`` or any other unexpected answer (including one the client cannot read)."""

    default_code = "internal"


_BY_CODE: dict[str, type[ReplogClientError]] = {
    "invalid_request": InvalidRequest,
    "too_large": TooLarge,
    "key_not_found": KeyNotFound,
    "idempotency_key_reused": IdempotencyKeyReused,
    "unavailable": Unavailable,
    "unknown_outcome": UnknownOutcome,
    "internal": ServerError,
    "member_not_found": MembershipRefused,
    "member_exists": MembershipRefused,
    "membership_change_pending": MembershipRefused,
    "would_lose_quorum": MembershipRefused,
    "member_not_caught_up": MembershipRefused,
}


def error_from_answer(
    *,
    status: int,
    code: str,
    message: str,
    header: Header | None,
    endpoint: str,
    compact_revision: int | None = None,
) -> ReplogClientError:
    """The typed error for one error answer of a node."""
    if code == "revision_compacted" or status == 410:
        return RevisionCompacted(
            message,
            compact_revision=compact_revision or 0,
            code=code,
            status=status,
            header=header,
            endpoint=endpoint,
        )
    cls = _BY_CODE.get(code, ServerError)
    return cls(message, code=code, status=status, header=header, endpoint=endpoint)
