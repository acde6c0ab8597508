"""The one root of errors that may reach a user, with their HTTP status, gRPC code and message.

Anything else that escapes is an internal error: users see a generic message, logs see the rest.
"""

from __future__ import annotations

import grpc
import orjson


class GatewayError(Exception):
    """An error with a public message. `kind` is a stable machine-readable code."""

    http_status: int = 500
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # OpenAI's error `type`; `code` is the finer reason (defaults to the type).
    kind: str = "internal_error"
    code: str | None = None
    # Whether a client's SDK should retry, said in `x-should-retry` (the OpenAI and Anthropic
    # SDKs obey it before their own rules); None: their own rules. The Anthropic SDK otherwise
    # retries a 429 after its Retry-After, however long that is.
    should_retry: bool | None = None

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.public_message = message
        self.retry_after_s = retry_after_s

    def headers(self) -> tuple[tuple[str, str], ...]:
        """The headers that go with this error in any format: Retry-After, x-should-retry."""
        headers: tuple[tuple[str, str], ...] = ()
        if self.retry_after_s is not None:
            headers += (("retry-after", str(self.retry_after_s)),)
        if self.should_retry is not None:
            headers += (("x-should-retry", "true" if self.should_retry else "false"),)
        return headers

    def json_body(self) -> bytes:
        """An OpenAI-style error body, which every OpenAI-compatible SDK surfaces cleanly."""
        return error_body(self.public_message, self.kind, self.reason)

    @property
    def reason(self) -> str:
        return self.code or self.kind


class InvalidRequest(GatewayError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "invalid_request_error"


class Unauthenticated(GatewayError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    kind = "authentication_error"


class PermissionDenied(GatewayError):
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    kind = "permission_error"


class NotFound(GatewayError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    kind = "not_found_error"


class AlreadyExists(GatewayError):
    http_status = 409
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    kind = "conflict_error"


class FailedPrecondition(GatewayError):
    http_status = 409
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    kind = "conflict_error"


class RateLimited(GatewayError):
    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    kind = "rate_limit_error"


class Unavailable(GatewayError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    kind = "service_unavailable"


class UpstreamFailed(GatewayError):
    """The upstream could not be reached (connection, TLS verification) or broke off before it
    answered: 503, as Envoy answers the same failures."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    kind = "service_unavailable"


class UpstreamTimeout(UpstreamFailed):
    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class InvalidPolicy(GatewayError):
    """A policy that cannot be compiled. Raised at load time, never at request time."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "invalid_policy"


# How much of a client's own input an error message may quote.
QUOTED_INPUT_LIMIT = 64


def quoted(value: str, limit: int = QUOTED_INPUT_LIMIT) -> str:
    """`value` as an error message may quote it: repr-quoted, cut to `limit` characters with an
    ellipsis, so no error ever echoes unbounded (or control-character) input back."""
    if len(value) > limit:
        return repr(value[:limit]) + "…"
    return repr(value)


def error_body(message: str, kind: str, code: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": code or kind}}
    )
