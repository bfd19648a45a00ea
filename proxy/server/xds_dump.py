"""/config_dump's ClustersConfigDump, ListenersConfigDump and RoutesConfigDump (Envoy's shape):
static and dynamic (xDS) resources, each dynamic one with its version_info and last_updated.

Read on the admin thread: `list()` copies of the main thread's dicts (atomic per dict, on
3.13 by the GIL and on 3.14t by the dict's own lock); the states themselves are replaced,
never mutated, by the main thread when an update applies.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping
from typing import Any

from ..admin.certs import redact_config

__all__ = ["xds_config_dump", "timestamp"]

_ADMIN = "type.googleapis.com/envoy.admin.v3."
_CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
_LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
_ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def timestamp(t: float) -> str:
    """Envoy's JSON Timestamp: 2026-12-07T02:39:56.995Z."""
    dt = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _typed(type_url: str, raw: Mapping[str, Any] | None) -> dict:
    return {"@type": type_url, **redact_config(copy.deepcopy(dict(raw or {})))}


def _versioned(entry: dict, version_info: str) -> dict:
    return {"version_info": version_info, **entry} if version_info else entry


def xds_config_dump(server) -> list[dict]:
    out = [_clusters(server), _listeners(server)]
    routes = _routes(server)
    if routes is not None:
        out.append(routes)
    return out


def _clusters(server) -> dict:
    dump: dict[str, Any] = {"@type": _ADMIN + "ClustersConfigDump"}
    cm = server.cluster_manager
    if cm is None:
        return dump
    started = timestamp(server.start_time)
    static, active, warming = [], [], []
    for name, state in sorted(list(cm.states().items())):
        if not state.added_via_api:
            static.append({"cluster": _typed(_CLUSTER, state.config.raw), "last_updated": started})
            continue
        entry = _versioned({"cluster": _typed(_CLUSTER, state.config.raw),
                            "last_updated": timestamp(state.last_updated)}, state.version_info)
        (active if state.warm else warming).append(entry)
    cds = server.cds
    if cds is not None and cds.stats.version_info:
        dump["version_info"] = cds.stats.version_info
    for key, items in (("static_clusters", static), ("dynamic_active_clusters", active),
                       ("dynamic_warming_clusters", warming)):
        if items:
            dump[key] = items
    return dump


def _listeners(server) -> dict:
    dump: dict[str, Any] = {"@type": _ADMIN + "ListenersConfigDump"}
    lm = getattr(server, "lds_listeners", None)
    started = timestamp(server.start_time)
    static = [{"listener": _typed(_LISTENER, lc.raw), "last_updated": started}
              for lc in server.bootstrap.listeners]
    if static:
        dump["static_listeners"] = static
    if lm is not None:
        lds = server.lds
        if lds is not None and lds.stats.version_info:
            dump["version_info"] = lds.stats.version_info
        dynamic = []
        warming = dict(list(getattr(server, "lds_warming", {}).items()))
        for name in sorted({*list(lm), *warming}):
            item: dict[str, Any] = {"name": name}
            for key, entry in (("active_state", lm.get(name)),
                               ("warming_state", getattr(warming.get(name), "entry", None))):
                if entry is not None:
                    item[key] = _versioned({"listener": _typed(_LISTENER, entry.config.raw),
                                            "last_updated": timestamp(entry.last_updated)},
                                           entry.version_info)
            dynamic.append(item)
        if dynamic:
            dump["dynamic_listeners"] = dynamic
    return dump


def _routes(server) -> dict | None:
    providers = getattr(server, "rds_providers", None)
    if not providers:
        return None
    dynamic = []
    for key, p in sorted(list(providers.items()), key=lambda kv: kv[1].route_config_name):
        if p.raw is None:
            continue
        dynamic.append(_versioned({"route_config": _typed(_ROUTE, p.raw),
                                   "last_updated": timestamp(p.last_updated)}, p.version_info))
    dump: dict[str, Any] = {"@type": _ADMIN + "RoutesConfigDump"}
    if dynamic:
        dump["dynamic_route_configs"] = dynamic
    return dump
