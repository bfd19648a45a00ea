"""What the admin endpoints read from the server (AdminContext), on the admin thread.

Reads only immutable snapshots (bootstrap, cluster snapshots) and merged stats; anything
that changes server state is posted to the main thread.
"""

from __future__ import annotations

import copy
import platform
import sys
import time

from .. import __version__
from ..hotrestart.messages import HOT_RESTART_VERSION

__all__ = ["ServerAdminContext"]


class ServerAdminContext:
    def __init__(self, server) -> None:
        self.server = server

    def stats_snapshot(self):
        return self.server.stats.snapshot()

    def clusters(self) -> list[dict]:
        cm = self.server.cluster_manager
        if cm is None:
            return []
        counters = self.server.stats.snapshot()
        out = []
        for name, snap in sorted(cm.snapshots().items()):
            t = snap.config.circuit_breakers
            hosts = []
            for h in snap.hosts:
                hosts.append({"address": h.address, "port": h.port, "weight": h.weight,
                              "hostname": h.hostname, "health_flags": "healthy",
                              "stats": self._host_stats(counters, name)})
            out.append({"name": name, "hosts": hosts,
                        "circuit_breakers": {"thresholds": [{
                            "priority": "DEFAULT", "max_connections": t.max_connections,
                            "max_pending_requests": t.max_pending_requests,
                            "max_requests": t.max_requests, "max_retries": t.max_retries}]}})
        return out

    @staticmethod
    def _host_stats(snapshot, cluster: str) -> dict:
        # Per-host stats are not tracked separately yet; report the cluster's totals.
        c = snapshot.counters
        g = snapshot.gauges
        p = f"cluster.{cluster}."
        return {"cx_active": g.get(p + "upstream_cx_active", 0), "cx_total": c.get(p + "upstream_cx_total", 0),
                "cx_connect_fail": c.get(p + "upstream_cx_connect_fail", 0),
                "rq_total": c.get(p + "upstream_rq_total", 0), "rq_active": g.get(p + "upstream_rq_active", 0),
                "rq_error": c.get(p + "upstream_rq_5xx", 0), "rq_success": c.get(p + "upstream_rq_2xx", 0)}

    def config_dump(self) -> dict:
        b = self.server.bootstrap
        return {"configs": [{
            "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "bootstrap": copy.deepcopy(b.raw) if b.raw is not None else {},
        }]}

    def listeners(self) -> list[dict]:
        return [{"name": name, "address": f"{host}:{port}"}
                for name, (host, port) in self.server.listener_addresses.items()]

    def server_info(self) -> dict:
        s = self.server
        uptime = int(time.time() - s.start_time)
        uptime_all = int(time.time() - s.original_start_time)
        b = s.bootstrap
        return {
            "version": f"ftproxy/{__version__}",
            "state": s.state,
            "hot_restart_version": HOT_RESTART_VERSION,
            "uptime_current_epoch": f"{uptime}s",
            "uptime_all_epochs": f"{uptime_all}s",
            "node": {"id": b.node.id, "cluster": b.node.cluster},
            "command_line_options": {
                "config_path": s.options.config_path,
                "concurrency": s.options.concurrency,
                "drain_time": f"{s.options.drain_time_s:g}s",
                "restart_epoch": s.epoch,
                "base_id": s.options.base_id,
                "log_level": s.options.log_level,
            },
            "python": {
                "version": platform.python_version(),
                "implementation": sys.implementation.name,
                "gil_enabled": _gil(),
                "free_threaded_build": bool(getattr(sys, "_is_gil_enabled", None)) and _ft_build(),
            },
        }

    def state(self) -> str:
        s = self.server
        if s.state == "LIVE" and s.healthcheck_failed:
            return "DRAINING"
        return s.state

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.server.healthcheck_failed = failed

    def quit(self) -> None:
        self.server.request_shutdown()


def _gil() -> bool:
    f = getattr(sys, "_is_gil_enabled", None)
    return True if f is None else bool(f())


def _ft_build() -> bool:
    import sysconfig
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
