"""A gRPC call's service and method, from its request path, as Envoy's gRPC context resolves
them for the `cluster.<name>.grpc[-web].<service>.<method>.*` stats
(Grpc::Common::resolveServiceAndMethod: `/<service>/<method>`, the query ignored).

Thread affinity: none (a pure function)."""

from __future__ import annotations

__all__ = ["request_names"]


def request_names(path: bytes) -> tuple[str, str] | None:
    """(service, method) of `/<service>/<method>` (query ignored), or None."""
    parts = path.split(b"?", 1)[0].split(b"/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        return None
    return parts[1].decode("latin-1"), parts[2].decode("latin-1")
