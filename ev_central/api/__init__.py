"""Central's HTTP API (docs/api.md): ``create_app`` builds it, ``ApiServer`` serves it on a
thread of Central's process."""

from .app import create_app
from .server import ApiServer

__all__ = ["ApiServer", "create_app"]
