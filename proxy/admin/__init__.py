"""Admin: Envoy's admin HTTP endpoints (`/stats`, `/clusters`, `/ready`, ...) over a small
threaded HTTP/1.1 server. The server calls back into an `AdminContext` the proxy provides.
"""

from .endpoints import ENDPOINTS, AdminContext, AdminResponse, handle, help_text
from .server import AdminServer

__all__ = ["ENDPOINTS", "AdminContext", "AdminResponse", "AdminServer", "handle", "help_text"]
