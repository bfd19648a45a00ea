"""What the admin endpoints read from the server (AdminContext), on the admin thread.

Reads only immutable snapshots (bootstrap, cluster snapshots) and merged stats; anything
that changes server state is posted to the main thread.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
import platform
import sys
import time

from .. import __version__
from ..admin.certs import context_certificates, redact_config
from ..config.bootstrap import runtime_layers
from ..hotrestart.messages import HOT_RESTART_VERSION
from . import gil_notes
from ..upstream.host import health_flags
from .xds_dump import xds_config_dump

__all__ = ["ServerAdminContext"]


def _double(v: float) -> str:
    """A double as Envoy prints it (fmt's shortest form: -1, 50, 66.66666666666667)."""
    return str(int(v)) if v == int(v) else repr(v)


class ServerAdminContext:
    def __init__(self, server) -> None:
        self.server = server

    def stats_snapshot(self):
        """The merged stats as /stats shows them: counters less what they were at the last
        /reset_counters (Envoy's reset changes only the admin's view: sinks still get every
        increment, as Envoy's statsd does)."""
        snap = self.server.stats.snapshot()
        base = self.server.counter_baseline  # replaced whole on reset, never mutated
        if not base:
            return snap
        return dataclasses.replace(snap, counters={name: max(0, value - base.get(name, 0))
                                                   for name, value in snap.counters.items()})

    def recent_lookups(self):
        """The registry's stat-name lookups (thread-safe: its own lock)."""
        return self.server.stats.recent_lookups

    def reset_counters(self) -> None:
        self.server.counter_baseline = dict(self.server.stats.snapshot().counters)

    def clusters(self) -> list[dict]:
        cm = self.server.cluster_manager
        if cm is None:
            return []
        out = []
        for name, snap in sorted(cm.snapshots().items()):
            cfg = snap.config
            hosts = []
            for h in snap.hosts:
                entry = {"address": h.address, "port": h.port, "weight": h.weight,
                         "hostname": h.hostname, "health_flags": health_flags(h),
                         "stats": self._host_stats(name, h), "priority": h.priority,
                         "region": h.locality[0], "zone": h.locality[1], "sub_zone": h.locality[2]}
                if h.outlier is not None:
                    # Main's last interval's numbers: two float reads (atomic), no lock.
                    sr, local = cm.outlier_host_info(name, h.key)
                    entry["success_rate"] = _double(sr)
                    entry["local_origin_success_rate"] = _double(local)
                hosts.append(entry)
            state = cm.states().get(name)
            extra = {}
            if state is not None and state.outlier is not None:
                nums = state.outlier.detector.sr_numbers   # replaced whole on main: one read
                extra["outlier"] = {k: _double(v) for k, v in (
                    ("success_rate_average", nums["success_rate"][0]),
                    ("success_rate_ejection_threshold", nums["success_rate"][1]),
                    ("local_origin_success_rate_average", nums["local_origin_success_rate"][0]),
                    ("local_origin_success_rate_ejection_threshold",
                     nums["local_origin_success_rate"][1]))}
            out.append({"name": name, "hosts": hosts, **extra,
                        "added_via_api": bool(state is not None and state.added_via_api),
                        "circuit_breakers": {"thresholds": [{
                            "priority": prio, "max_connections": t.max_connections,
                            "max_pending_requests": t.max_pending_requests,
                            "max_requests": t.max_requests, "max_retries": t.max_retries}
                            for prio, t in (("DEFAULT", cfg.circuit_breakers),
                                            ("HIGH", cfg.high_priority_circuit_breakers))]}})
        return out

    def _host_stats(self, cluster: str, host) -> dict:
        """Envoy's per-host stats, summed over the workers' pools for this host. Read from the
        admin thread: each value is a single int attribute read; `dict.get` and `list()` on the
        workers' tables are safe against concurrent inserts (per-object locks on 3.14t)."""
        out = dict.fromkeys(("cx_total", "cx_active", "cx_connect_fail", "rq_total", "rq_active",
                             "rq_pending_active", "rq_success", "rq_error", "rq_timeout"), 0)
        for w in list(self.server.workers):
            wc = w.clusters.get(cluster)
            for pool in wc.host_pools(host.key) if wc is not None else ():
                out["cx_total"] += pool.cx_total
                out["cx_active"] += pool.cx_active
                out["cx_connect_fail"] += pool.cx_connect_fail
                out["rq_total"] += pool.rq_total
                out["rq_active"] += pool.active_requests
                out["rq_success"] += pool.rq_success
                out["rq_error"] += pool.rq_error
                out["rq_timeout"] += pool.rq_timeout
                out["rq_pending_active"] += len(pool.pending)
        return out

    def config_dump(self) -> dict:
        """Envoy's order: bootstrap, clusters, listeners, (scoped routes), routes."""
        b = self.server.bootstrap
        return {"configs": [{
            "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            # Envoy redacts its sensitive fields (private keys, passwords...) in every dump.
            "bootstrap": redact_config(copy.deepcopy(b.raw)) if b.raw is not None else {},
        }, *xds_config_dump(self.server)]}

    def certificates(self) -> list[dict]:
        """/certs: each TLS context's certificates, listener filter chains first, then clusters."""
        out = []
        for lc in self.server.bootstrap.listeners:
            raw_chains = (lc.raw or {}).get("filter_chains") or []
            for i, chain in enumerate(lc.filter_chains):
                raw = raw_chains[i] if i < len(raw_chains) else {}
                entry = _tls_entry(chain.transport_socket, raw)
                if entry is not None:
                    out.append(entry)
        for cc in self.server.bootstrap.clusters:
            entry = _tls_entry(cc.transport_socket, cc.raw or {})
            if entry is not None:
                out.append(entry)
        return out

    def listeners(self) -> list[dict]:
        # A copy first: LDS changes the dict on the main thread.
        return [{"name": name, "address": f"{host}:{port}"}
                for name, (host, port) in list(self.server.listener_addresses.items())]

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
                # What turned the GIL back on, if something did (the Lua filter's lupa).
                "gil_reenabled_by": list(gil_notes.reasons()),
            },
        }

    def runtime(self) -> dict:
        """Envoy's /runtime: the layers' names and, per key, its value in each layer ("" where
        a layer does not set it) and the last layer's that does."""
        layers = runtime_layers(self.server.bootstrap.raw)
        entries = {}
        for key in sorted({k for _, values in layers for k in values}):
            per_layer = [values.get(key, "") for _, values in layers]
            final = next((v for v in reversed(per_layer) if v), "")
            entries[key] = {"layer_values": per_layer, "final_value": final}
        return {"entries": entries, "layers": [name for name, _ in layers]}

    def memory(self) -> dict:
        """Envoy's /memory fields from this process's /proc/self/status (Envoy's come from
        tcmalloc): allocated = anonymous resident memory (the heaps), heap_size = the data
        segment's virtual size, total_physical_bytes = resident memory; the tcmalloc-only
        figures are 0. uint64 values as strings, as Envoy prints them."""
        status = {}
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                for line in f:
                    name, _, rest = line.partition(":")
                    parts = rest.split()
                    if len(parts) == 2 and parts[1] == "kB":
                        status[name] = int(parts[0]) * 1024
        except OSError:
            pass
        return {"allocated": str(status.get("RssAnon", 0)), "heap_size": str(status.get("VmData", 0)),
                "pageheap_unmapped": "0", "pageheap_free": "0", "total_thread_cache": "0",
                "total_physical_bytes": str(status.get("VmRSS", 0))}

    def init_dump(self) -> dict:
        """Envoy's /init_dump: {} once nothing waits; else the listeners still warming (LDS
        listeners waiting for their routes), one unready target each."""
        warming = sorted(getattr(self.server, "lds_warming", {}) or {})
        if not warming:
            return {}
        return {"unready_targets_dumps": [
            {"name": f"Listener-local-init-manager {name}", "target_names": [f"listener {name} routes"]}
            for name in warming]}

    def state(self) -> str:
        s = self.server
        if s.state == "LIVE" and s.healthcheck_failed:
            return "DRAINING"
        return s.state

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.server.healthcheck_failed = failed

    def drain_listeners(self, inbound_only: bool, graceful: bool, skip_exit: bool) -> None:
        server = self.server
        server.main.post(lambda: server.drain_listeners(inbound_only, graceful, skip_exit))

    def quit(self) -> None:
        self.server.request_shutdown()

    def reopen_logs(self) -> None:
        self.server.reopen_logs()


def _tls_entry(factory, raw_owner) -> dict | None:
    """The /certs entry of a transport socket factory (None unless it is TLS); `raw_owner`:
    the filter chain or cluster as written (for the certificates' file names)."""
    config = getattr(factory, "config", None)
    common = getattr(config, "common_tls_context", None)
    if common is None:
        return None
    raw = ((raw_owner.get("transport_socket") or {}).get("typed_config") or {}) \
        if isinstance(raw_owner, Mapping) else {}
    return context_certificates(common, raw.get("common_tls_context"))


def _gil() -> bool:
    f = getattr(sys, "_is_gil_enabled", None)
    return True if f is None else bool(f())


def _ft_build() -> bool:
    import sysconfig
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
