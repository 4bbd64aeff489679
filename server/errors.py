"""Errors the data plane raises, each carrying the gRPC status code name it maps to (no grpc import)."""

from __future__ import annotations


class ServiceError(Exception):
    """A request failed in a way the caller can act on; `code` is a grpc.StatusCode member name."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    code = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    code = "NOT_FOUND"


class FailedPrecondition(ServiceError):
    """The request is well formed but the model lacks what it needs (e.g. a mixture prior)."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(ServiceError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(ServiceError):
    code = "UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    code = "DEADLINE_EXCEEDED"


class Cancelled(ServiceError):
    code = "CANCELLED"


class QueueFull(ResourceExhausted):
    """A batcher's queue is full: the same request may succeed in a moment (HTTP 429, not 413)."""
