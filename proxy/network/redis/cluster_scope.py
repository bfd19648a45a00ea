"""Commands without a key that Envoy sends to every host of the cluster (Envoy's
ClusterScopeCmdRequest and cluster_response_handler.cc): SCRIPT, FLUSHALL, FLUSHDB, SELECT,
CONFIG SET/REWRITE/RESETSTAT and SLOWLOG RESET must get the same answer from every host (it is
passed on, else "all responses not same"); KEYS, CONFIG GET and SLOWLOG GET concatenate the
hosts' arrays, SLOWLOG LEN sums, ROLE makes an array of the hosts' answers. Any error answer:
the first host's error, by host order. One request per host of the cluster the empty key
routes to (the catch-all route), priority 0 (in `_hosts`' order), on the shared pipelined
connections. RANDOMKEY and CLUSTER INFO/SLOTS/KEYSLOT/NODES go to one host
drawn at random (Envoy's RandomShardRequest), the answer passed on.

Thread affinity: the session's worker. Must not: parse RESP or touch the downstream.
"""

from __future__ import annotations

from .commands import CLUSTER_SCOPE, RANDOM_SHARD
from .resp import Error, encode_request
from .upstream_client import FAILED

__all__ = ["CLUSTER_SCOPE", "RANDOM_SHARD", "cluster_scope_request"]

_SAME = "same"
_MERGE = "merge"
_SUM = "sum"
_APPEND = "append"
# command or command:subcommand -> how the answers are put together
_HANDLERS = {
    "script": _SAME, "flushall": _SAME, "flushdb": _SAME, "config:set": _SAME, "config:rewrite": _SAME,
    "config:resetstat": _SAME, "slowlog:reset": _SAME, "select": _SAME,
    "config:get": _MERGE, "slowlog:get": _MERGE, "slowlog:len": _SUM, "keys": _MERGE, "role": _APPEND,
}
_CLUSTER_SUBCOMMANDS = frozenset((b"info", b"slots", b"keyslot", b"nodes"))


def _hosts(session):
    """The cluster of the empty key and its priority-0 hosts, ordered by "address:port" as
    text: the order Envoy 1.40 answered KEYS in whatever the order of the cluster's endpoints
    (observed, not read from its source)."""
    ctx = session.ctx
    route, _ = ctx.route(b"")
    cluster = ctx.worker.clusters.get(route.cluster) if route is not None else None
    if cluster is None:
        return None, ()
    return cluster, tuple(sorted((h for h in cluster.snapshot.hosts if h.priority == 0),
                                 key=lambda h: f"{h.address}:{h.port}"))


def cluster_scope_request(session, slot, stats, value: list, name: str, no_host) -> None:
    answer = session._answer
    sub = value[1].lower() if len(value) > 1 else b""
    if name == "cluster" and sub not in _CLUSTER_SUBCOMMANDS:
        stats.error.value += 1
        answer(slot, Error(b"ERR cluster subcommand '%s' is not supported" % sub))
        return
    cluster, hosts = _hosts(session)
    if not hosts:
        stats.error.value += 1
        answer(slot, no_host)
        return
    if name in RANDOM_SHARD:
        hosts = (hosts[session.ctx.worker.rand_below(len(hosts))],)
        kind = None
    else:
        kind = _HANDLERS.get(f"{name}:{sub.decode('latin-1')}") or _HANDLERS.get(name)
        if kind is None:
            stats.error.value += 1
            answer(slot, Error(b"ERR unsupported cluster scope command or invalid arguments"))
            return
    parts: list = [None] * len(hosts)
    waiting = [len(hosts)]
    payload = encode_request(value)

    def child(i: int, result) -> None:
        parts[i] = no_host if result is None else (session.failure if result is FAILED else result)
        waiting[0] -= 1
        if not waiting[0]:
            _finish(session, slot, stats, kind, parts)

    for i, host in enumerate(hosts):
        handle = session.ctx.send_to(cluster, host, payload, lambda r, i=i: child(i, r))
        if handle is None:
            child(i, None)
        else:
            slot.handles.append(handle)


def _finish(session, slot, stats, kind, parts: list) -> None:
    answer = session._answer
    if kind is None:   # one random host: its answer as it is
        (result,) = parts
        (stats.error if type(result) is Error else stats.success).value += 1
        answer(slot, result)
        return
    for p in parts:
        if type(p) is Error:
            stats.error.value += 1
            answer(slot, p)
            return
    if kind == _SAME:
        if any(p != parts[0] or type(p) is not type(parts[0]) for p in parts):
            stats.error.value += 1
            answer(slot, Error(b"all responses not same"))
            return
        result = parts[0]
    elif kind == _SUM:
        if any(type(p) is not int for p in parts):
            stats.error.value += 1
            answer(slot, Error(b"non-integer response received from shard"))
            return
        if any(p < 0 for p in parts):
            stats.error.value += 1
            answer(slot, Error(b"negative value received from upstream"))
            return
        result = sum(parts)
    else:
        if any(type(p) is not list for p in parts):
            stats.error.value += 1
            answer(slot, Error(b"non-array response received from shard"))
            return
        result = [x for p in parts for x in p] if kind == _MERGE else list(parts)
    stats.success.value += 1
    answer(slot, result)
