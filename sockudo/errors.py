"""The error tree of sockudo-py. Edges map these to wire errors in exactly one place each.

::

    SockudoError
    ├── ConfigError                      bad configuration; the node refuses to start
    ├── LogError (.retriable)            the append-only log
    │   ├── LogUnavailable               definitely not written (retriable)
    │   ├── AppendOutcomeUnknown         sent, no answer in time: maybe written (retriable)
    │   ├── OffsetOutOfRange             read below the log start or past the end
    │   ├── TopicMismatch                existing topic has other partitions / cleanup policy
    │   ├── UnknownTopic                 topic was never created
    │   └── RecordTooLarge               over the record size limit; nothing written
    ├── CodecError                       bytes in the log that we cannot turn into an event
    │   ├── UnknownSchema                `sk.schema` family not known to this node
    │   ├── UnknownSchemaVersion         version byte newer than any schema we ship
    │   └── UndecodableRecord            known family and version, but the bytes do not parse
    ├── ContinuityError                  the projection cannot prove what it serves
    │   └── StreamNotHealthy (.state)    reads of a degraded / reset-required stream fail closed
    ├── PublishError                     the publish path after validation
    │   ├── IdempotencyConflict          key reused with another fingerprint
    │   ├── Backpressure                 the local fold lags too far; nothing appended
    │   └── FoldTimeout                  appended, but the local fold did not reach it in time
    └── ApiError (.status, .code)        a request the HTTP edge rejects before touching the log
"""

from __future__ import annotations

from typing import Any


class SockudoError(Exception):
    """Base of every error raised by sockudo-py."""


class ConfigError(SockudoError):
    """The configuration is invalid; the message says which key and why."""


class NodeFailed(SockudoError):
    """The node stopped because it could no longer do its job (see ``Runtime.fatal``)."""


class ProjectionUnavailable(SockudoError):
    """The node's projection database cannot be opened (another process holds it, I/O)."""


class ProjectionCorrupt(ProjectionUnavailable):
    """The projection database failed a read (a block checksum mismatch, say): a scan would
    otherwise end early as if the data ended there. Rebuild the projection from the log."""


class LogError(SockudoError):
    """An operation on the append-only log failed."""

    retriable: bool = False


class LogUnavailable(LogError):
    """The record was definitely not written (broker unreachable, log closed)."""

    retriable = True


class LogCorrupt(LogError):
    """The log's storage failed a read (a block checksum mismatch, say). Records past the bad
    block cannot be read and must not be skipped, so reading stops here for good."""


class AppendOutcomeUnknown(LogError):
    """The append was sent but not acknowledged in time; it may or may not be in the log."""

    retriable = True


class OffsetOutOfRange(LogError):
    """A read position lies below the log start (records were deleted) or past the end."""

    def __init__(self, log_start: int, end: int, message: str | None = None) -> None:
        self.log_start = log_start
        self.end = end
        super().__init__(message or f"offset out of range: log_start={log_start} end={end}")


class TopicMismatch(LogError):
    """An existing topic differs from what the node expects (partitions, cleanup policy)."""


class UnknownTopic(LogError):
    """The topic does not exist."""


class RecordTooLarge(LogError):
    """The record exceeds the maximum record size; nothing was written."""


class CodecError(SockudoError):
    """A log record cannot be decoded into an event."""


class UnknownSchema(CodecError):
    """The record names an event family (`sk.schema`) this node does not know."""


class UnknownSchemaVersion(CodecError):
    """The record's schema-version byte is not one this node ships."""

    def __init__(self, family: str, version: int) -> None:
        self.family = family
        self.version = version
        super().__init__(f"unknown schema version {version} for {family}")


class UndecodableRecord(CodecError):
    """The record names a known schema version but its bytes do not decode."""


class ContinuityError(SockudoError):
    """The projection cannot prove continuity for what was asked."""


class StreamNotHealthy(ContinuityError):
    """A continuity-sensitive read of a degraded or reset-required stream (fail closed)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        super().__init__(f"stream is {state.get('durable_state')}: {state.get('reason')}")


class PublishError(SockudoError):
    """The publish path failed after validation."""


class IdempotencyConflict(PublishError):
    """An idempotency key was reused with a different request fingerprint."""


class Backpressure(PublishError):
    """The local fold lags too far behind the log; nothing was appended."""


class FoldTimeout(PublishError):
    """The event was appended but the local projection did not fold it in time."""


class ApiError(SockudoError):
    """A request rejected at the HTTP edge; carries the HTTP status and the error code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}
        super().__init__(f"{status} {code}: {message}")
