"""The server's health-check state that workers read: one object shared by every thread.

`failed` is the one documented atomic flag of the admin's `/healthcheck/fail` and
`/healthcheck/ok` (a bool attribute: each write and read is atomic on GIL and free-threaded
builds; a worker may see the change one request late, as Envoy's relaxed atomic). The HTTP
`envoy.filters.http.health_check` filter reads it per request, with `node_cluster` (the
bootstrap's node.cluster, Envoy's local_info cluster name).
Thread affinity: any thread; written only by the admin (or main) thread.
"""

from __future__ import annotations

__all__ = ["ServerHealth"]


class ServerHealth:
    __slots__ = ("failed", "node_cluster")

    def __init__(self, node_cluster: str = "") -> None:
        self.failed = False
        self.node_cluster = node_cluster
