"""The Gatez control plane: the gRPC control service, the versioned policy store, and the
Watch stream that pushes policy snapshots to data planes.

Run it with `python -m control`; embed it (tests, a launcher) with `start(settings)`.
"""

from control.auth import CredentialInterceptor, Role
from control.server import ControlServer, serve, start
from control.service import ControlServicer, DataPlaneRegistry, DataPlaneServicer
from control.store import PolicyStore

__all__ = [
    "ControlServer",
    "ControlServicer",
    "CredentialInterceptor",
    "DataPlaneRegistry",
    "DataPlaneServicer",
    "PolicyStore",
    "Role",
    "serve",
    "start",
]
