"""ORIGINAL_DST clusters: each request names its own host (Envoy's OriginalDstCluster).

The cluster has no endpoints. Its load balancer (lb_policy CLUSTER_PROVIDED or
ORIGINAL_DST_LB) takes the destination, in Envoy's order, from:
  1. with `original_dst_lb_config.use_http_header`, the request header
     `http_header_name` (default `x-envoy-original-dst-host`; `:authority` allowed): its
     first value must be an IP literal and port (`10.0.0.1:443`, `[::1]:443`; a host name
     is not one);
  2. else the downstream connection's local address when a listener filter restored it
     (original_dst: the pre-NAT destination);
with `upstream_port_override` replacing the port. No destination: `original_dst_host_invalid`
is counted and the router answers 503 UH (no_healthy_upstream), as Envoy.

Hosts are made on demand, per worker (each worker keeps its own map, as its pools are its
own: no cross-thread traffic on the request path), and forgotten after `cleanup_interval`
without use: their pools drain. The admin's /clusters lists the configured hosts only, so an
ORIGINAL_DST cluster shows none (README, deliberate difference).

Thread affinity: one worker. Must not: resolve names (only IP literals are destinations).
"""

from __future__ import annotations

import ipaddress

from .host import Host

__all__ = ["OriginalDstHosts", "parse_ip_port"]


def parse_ip_port(value: str) -> tuple[str, int] | None:
    """(ip, port) of `ip:port` or `[ipv6]:port` (Envoy's parseInternetAddressAndPortNoThrow),
    else None."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1:end + 2] != ":":
            return None
        ip, port = value[1:end], value[end + 2:]
        version = 6
    else:
        ip, sep, port = value.rpartition(":")
        if not sep or ":" in ip:
            return None
        version = 4
    if not port.isdigit() or len(port) > 5 or int(port) > 65535:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if addr.version != version:
        return None
    return str(addr), int(port)


class OriginalDstHosts:
    """One worker's view of an ORIGINAL_DST cluster: the hosts requests named, by address."""

    __slots__ = ("config", "cluster", "header", "pseudo", "hosts", "used", "timer")

    def __init__(self, config, cluster) -> None:
        self.config = config          # cluster_config.OriginalDstConfig
        self.cluster = cluster        # the WorkerCluster (its stats, pools, dispatcher)
        name = config.http_header_name
        self.pseudo = name.startswith(":")
        self.header = name if self.pseudo else name.encode("latin-1")
        self.hosts: dict[tuple[str, int], Host] = {}
        self.used: set[tuple[str, int]] = set()   # hosts chosen since the last cleanup
        self.timer = None

    def choose(self, head, restored_local: tuple[str, int] | None) -> Host | None:
        """The host for a request (`head`: its RequestHead), or None."""
        cfg = self.config
        dest = None
        if cfg.use_http_header:
            if self.pseudo:
                value = head.get_str(self.header)
                value = value or None
            else:
                raw = head.headers.get(self.header)
                value = raw.split(b",", 1)[0].strip().decode("latin-1") if raw is not None else None
            if value is not None:
                dest = parse_ip_port(value)  # (not an IP and port: as if absent, as Envoy)
        if dest is None and restored_local is not None:
            dest = restored_local
        if dest is None:
            self.cluster.stats.original_dst_host_invalid.value += 1
            return None
        if cfg.upstream_port_override:
            dest = (dest[0], cfg.upstream_port_override)
        host = self.hosts.get(dest)
        if host is None:
            host = self.hosts[dest] = Host(dest[0], dest[1])
            self._arm()
        self.used.add(dest)
        return host

    def _arm(self) -> None:
        timer = self.timer
        if timer is None:
            timer = self.timer = self.cluster.worker.dispatcher.create_timer(self._cleanup)
        if timer.deadline is None:
            timer.enable(self.config.cleanup_interval)

    def _cleanup(self) -> None:
        """Envoy's cleanup: hosts not chosen since the last one are forgotten (their pools
        drain: idle connections close, busy ones when their streams end)."""
        stale = [key for key in self.hosts if key not in self.used]
        self.used.clear()
        for key in stale:
            del self.hosts[key]
            self.cluster.drain_host(key)
        if self.hosts:
            self._arm()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.disable()
