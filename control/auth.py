"""Admin authentication: every call carries `authorization: Bearer <admin token>`.

Server reflection and health stay open, so `grpcurl list` and load-balancer probes work without a
secret; they expose the API's shape and liveness, never data.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeAlias

import grpc

OPEN_SERVICES: Final = frozenset(
    {
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
        "grpc.health.v1.Health",
    }
)
MISSING_TOKEN: Final = "missing `authorization: Bearer <admin token>` metadata"
WRONG_TOKEN: Final = "the admin token is not valid"

log = logging.getLogger("gatez.control.auth")

# grpc's classes are generic only in their stubs, not at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
if TYPE_CHECKING:
    ServerInterceptor: TypeAlias = grpc.aio.ServerInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor


class AdminTokenInterceptor(ServerInterceptor):
    """Refuses every call outside `OPEN_SERVICES` that lacks the admin bearer token."""

    def __init__(self, admin_token: str) -> None:
        if not admin_token:
            raise ValueError("an empty admin token would let anyone in")
        self._expected = admin_token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method: str = handler_call_details.method
        if _service_of(method) in OPEN_SERVICES:
            return await continuation(handler_call_details)
        problem = self._problem(handler_call_details.invocation_metadata)
        if problem is None:
            return await continuation(handler_call_details)
        log.info("refused %s: %s", method, problem)
        return _refusal(await continuation(handler_call_details), problem)

    def _problem(self, metadata: grpc.Metadata | None) -> str | None:
        """Why the call is not authenticated, or None when it is."""
        values = [v for k, v in metadata or () if k == "authorization"]
        if not values:
            return MISSING_TOKEN
        scheme, _, token = str(values[0]).partition(" ")
        if scheme.lower() != "bearer" or not token:
            return MISSING_TOKEN
        # Constant-time: the comparison must not reveal how much of a guess was right.
        if not hmac.compare_digest(token.strip().encode(), self._expected):
            return WRONG_TOKEN
        return None


def _service_of(method: str) -> str:
    """`/package.Service/Method` → `package.Service`."""
    return method.lstrip("/").partition("/")[0]


def _refusal(handler: Handler | None, message: str) -> Handler:
    """A handler of the same shape as `handler` that ends the call with UNAUTHENTICATED; shapes
    must match, or a streaming client would wait on a call the server treats as unary."""

    async def refuse(_request: object, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_stream_rpc_method_handler(refuse)
