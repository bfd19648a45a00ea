"""Commands without a key that Envoy sends to every host of the cluster (Envoy's
ClusterScopeCmdRequest and cluster_response_handler.cc): SCRIPT, FLUSHALL, FLUSHDB, SELECT,
CONFIG SET/REWRITE/RESETSTAT and SLOWLOG RESET must get the same answer from every host (it is
passed on, else "all responses not same"); KEYS, CONFIG GET and SLOWLOG GET concatenate the
hosts' arrays, SLOWLOG LEN sums, ROLE makes an array of the hosts' answers. Any error answer:
the first host's error, by host order. One request per host of the cluster the empty key
routes to (the catch-all route), priority 0 (in `_hosts`' order), on the shared pipelined
connections. RANDOMKEY and CLUSTER INFO/SLOTS/KEYSLOT/NODES go to one host
drawn at random (Envoy's RandomShardRequest), the answer passed on. SCAN and INFO.SHARD: their
functions' docstrings.

Thread affinity: the session's worker. Must not: parse RESP or touch the downstream.
"""

from __future__ import annotations

from .commands import CLUSTER_SCOPE, RANDOM_SHARD
from .resp import Error, encode_request
from .upstream_client import FAILED

__all__ = ["CLUSTER_SCOPE", "RANDOM_SHARD", "cluster_scope_request", "scan_request", "info_shard_request"]

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


def _cluster_hosts(session, key: bytes):
    ctx = session.ctx
    route, _ = ctx.route(key)
    cluster = ctx.worker.clusters.get(route.cluster) if route is not None else None
    if cluster is None:
        return None, ()
    return cluster, tuple(sorted((h for h in cluster.snapshot.hosts if h.priority == 0),
                                 key=lambda h: f"{h.address}:{h.port}"))


def scan_request(session, slot, stats, value: list, no_host) -> None:
    """SCAN: sent as it is to every host of the cluster its cursor routes to (Envoy's
    ScanRequest routes by the cursor argument), the answers' elements concatenated (cursor,
    keys, cursor, keys...: Envoy concatenates in the order the hosts answer, ftproxy in host
    order); any non-array answer: "finished with N error(s)"."""
    cluster, hosts = _cluster_hosts(session, value[1])
    if not hosts:
        stats.error.value += 1
        session._answer(slot, no_host)
        return
    parts: list = [None] * len(hosts)
    waiting = [len(hosts)]
    payload = encode_request(value)

    def child(i: int, result) -> None:
        parts[i] = result
        waiting[0] -= 1
        if waiting[0]:
            return
        errors = sum(1 for p in parts if type(p) is not list)
        (stats.error if errors else stats.success).value += 1
        session._answer(slot, Error(b"finished with %d error(s)" % errors) if errors
                        else [x for p in parts for x in p])

    for i, host in enumerate(hosts):
        handle = session.ctx.send_to(cluster, host, payload, lambda r, i=i: child(i, r))
        if handle is None:
            child(i, no_host)
        else:
            slot.handles.append(handle)


def info_shard_request(session, slot, stats, value: list, no_host) -> None:
    """INFO.SHARD <index> [section]: INFO [section] to that host of the catch-all cluster (in
    address order), its answer passed on (Envoy's ShardInfoRequest)."""
    answer = session._answer
    if len(value) > 3:
        session._wrong_arity(slot, stats, value)
        return
    if not value[1].isdigit() or int(value[1]) > 65535:
        stats.error.value += 1
        answer(slot, Error(b"ERR invalid shard_id - must be a numeric shard index"))
        return
    index = int(value[1])
    cluster, hosts = _cluster_hosts(session, b"")
    if not hosts:
        stats.error.value += 1
        answer(slot, no_host)
        return
    if index >= len(hosts):
        stats.error.value += 1
        answer(slot, Error(b"ERR shard_id %d out of range (0-%d)" % (index, len(hosts) - 1)))
        return

    def done(result) -> None:
        if result is FAILED:
            result = session.failure
        (stats.error if type(result) is Error else stats.success).value += 1
        answer(slot, result)

    handle = session.ctx.send_to(cluster, hosts[index], encode_request([b"INFO", *value[2:]]), done)
    slot.handles.append(handle)


def _hosts(session):
    """The cluster of the empty key (the catch-all route) and its priority-0 hosts, ordered by
    "address:port" as text: the order Envoy 1.40 answered KEYS in whatever the order of the
    cluster's endpoints (observed, not read from its source)."""
    return _cluster_hosts(session, b"")


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
