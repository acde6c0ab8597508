"""Who may call what: administrators with the admin token call `ControlService`; data planes
with a data-plane token call `DataPlaneService` (Watch, IngestLogs). Each credential opens its
own service only: the admin token cannot watch snapshots (they carry every tenant's key digests
and the sealed provider credentials), and a data plane's token cannot change the policy.

Server reflection and health stay open, so `grpcurl list` and load-balancer probes work without a
secret; they expose the API's shape and liveness, never data. Any other service is refused.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeAlias

import grpc

OPEN_SERVICES: Final = frozenset(
    {
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
        "grpc.health.v1.Health",
    }
)
MISSING_TOKEN: Final = "missing `authorization: Bearer <token>` metadata"
WRONG_TOKEN: Final = "the token is not valid"
ADMIN_TOKEN_REFUSED: Final = (
    "the admin token cannot call the data-plane service: data planes use their own credential "
    "(GATEZ_DATAPLANE_TOKEN or GATEZ_DATAPLANE_TOKEN_FILE)"
)
DATAPLANE_TOKEN_REFUSED: Final = (
    "a data-plane token cannot call the admin service: use the admin token"
)
UNKNOWN_SERVICE: Final = "no credential opens this service"

log = logging.getLogger("gatez.control.auth")

# grpc's classes are generic only in their stubs, not at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
if TYPE_CHECKING:
    ServerInterceptor: TypeAlias = grpc.aio.ServerInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor


class Role(enum.Enum):
    """What a credential is for."""

    ADMIN = "admin"
    DATA_PLANE = "data plane"


# The refusal a role's credential meets at a service of the other role.
WRONG_ROLE: Final = {Role.ADMIN: ADMIN_TOKEN_REFUSED, Role.DATA_PLANE: DATAPLANE_TOKEN_REFUSED}


class CredentialInterceptor(ServerInterceptor):
    """Lets a call in only with a bearer token of the role its service requires.

    `services` maps each guarded service (`package.Service`) to its role. Tokens are kept as
    SHA-256 digests and compared in constant time, so neither a token's content nor its length
    shows in how long a refusal takes.
    """

    def __init__(
        self,
        services: Mapping[str, Role],
        *,
        admin_tokens: Iterable[str],
        dataplane_tokens: Iterable[str],
    ) -> None:
        self._services = dict(services)
        self._tokens: list[tuple[bytes, Role]] = []
        for role, tokens in ((Role.ADMIN, admin_tokens), (Role.DATA_PLANE, dataplane_tokens)):
            listed = list(tokens)
            if not listed or not all(listed):
                raise ValueError(f"an empty {role.value} token would let anyone in")
            self._tokens += [(_digest(token), role) for token in listed]
        digests = [digest for digest, _ in self._tokens]
        if len(set(digests)) != len(digests):
            raise ValueError("the admin token and a data-plane token must differ")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method: str = handler_call_details.method
        if _service_of(method) in OPEN_SERVICES:
            return await continuation(handler_call_details)
        refusal = self._refusal(method, handler_call_details.invocation_metadata)
        if refusal is None:
            return await continuation(handler_call_details)
        code, message = refusal
        log.info("refused %s: %s", method, message)
        return _refusal(await continuation(handler_call_details), code, message)

    def _refusal(
        self, method: str, metadata: grpc.Metadata | None
    ) -> tuple[grpc.StatusCode, str] | None:
        """The status and message to refuse the call with, or None to let it in."""
        required = self._services.get(_service_of(method))
        if required is None:
            return grpc.StatusCode.PERMISSION_DENIED, UNKNOWN_SERVICE
        values = [v for k, v in metadata or () if k == "authorization"]
        if not values:
            return grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN
        scheme, _, token = str(values[0]).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN
        role = self._role_of(token.strip())
        if role is None:
            return grpc.StatusCode.UNAUTHENTICATED, WRONG_TOKEN
        if role is not required:
            return grpc.StatusCode.PERMISSION_DENIED, WRONG_ROLE[role]
        return None

    def _role_of(self, token: str) -> Role | None:
        presented = _digest(token)
        found = None
        # Every digest is compared, so the time taken does not depend on which one matches.
        for digest, role in self._tokens:
            if hmac.compare_digest(presented, digest):
                found = role
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _service_of(method: str) -> str:
    """`/package.Service/Method` → `package.Service`."""
    return method.lstrip("/").partition("/")[0]


def _refusal(handler: Handler | None, code: grpc.StatusCode, message: str) -> Handler:
    """A handler of the same shape as `handler` that ends the call with `code`; shapes must
    match, or a streaming client would wait on a call the server treats as unary."""

    async def refuse(_request: object, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
        await context.abort(code, message)

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_stream_rpc_method_handler(refuse)
