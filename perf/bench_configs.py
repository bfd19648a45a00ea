"""Configs and payloads for perf/bench.py: the nginx upstream (127.0.0.1:18080), nginx and
HAProxy as reference proxies, the files they serve and wrk's report script.

Job: write them under bench.py's work directory; the ports are the ones peers.sh uses with the
default PERF_PORT_BASE (perf/ports.py), moved with it otherwise.
Loopback only. Benchmark tool, not imported by the proxy.
"""

from __future__ import annotations

import os
from pathlib import Path

from ports import base_from_env, plan, render  # perf/ports.py (perf/ is on sys.path)

__all__ = ["write_configs", "render_config", "UP", "HAP", "NGX", "FT", "RELAY", "HAP_TCP", "ADMIN"]

_BASE = base_from_env()
_PORTS = plan(_BASE)
UP, HAP, NGX, FT = _PORTS["upstream"], _PORTS["haproxy"], _PORTS["nginx"], _PORTS["proxy"]
HAP_TCP = _PORTS["haproxy_tcp"]  # HAProxy mode tcp (the tcp scenario)
RELAY = _PORTS["relay"]  # perf/probe_relay.py, the plain asyncio relay (TCP bulk reference)
ADMIN = _PORTS["admin"]  # ftproxy's admin in configs/*.yaml


def render_config(work: Path, name: str) -> Path:
    """perf/configs/NAME with this base's ports, written to WORK (the same text by default)."""
    src = Path(__file__).resolve().parent / "configs" / name
    dst = work / f"ftproxy-{name}"
    dst.write_text(render(src.read_text(), _BASE))
    return dst


def write_configs(work: Path, *, bulk_mb: int, slow_mb: int, hap_maxconn: int) -> None:
    """The files every scenario serves and the upstream, nginx, HAProxy and wrk configs."""
    (work / "www").mkdir()
    (work / "tmp").mkdir()
    os.chmod(work, 0o755)
    with open(work / "www" / "1m.bin", "wb") as f:
        f.write(os.urandom(1024 * 1024))
    with open(work / "www" / "big.bin", "wb") as f:
        for _ in range(bulk_mb):
            f.write(os.urandom(1024 * 1024))
    with open(work / "www" / "huge.bin", "wb") as f:   # sparse: `slow_mb` MiB of zeros, no disk
        f.truncate(slow_mb * 1024 * 1024)
    body = "0" * 100
    common = (f"access_log off; keepalive_requests 1000000; keepalive_timeout 300s; "
              f"client_body_temp_path {work}/tmp/b; proxy_temp_path {work}/tmp/p; "
              f"fastcgi_temp_path {work}/tmp/f; uwsgi_temp_path {work}/tmp/u; scgi_temp_path {work}/tmp/s;")
    (work / "upstream.conf").write_text(f"""
worker_processes 1; pid {work}/upstream.pid; error_log {work}/upstream.err warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 30000; }}
http {{ {common} sendfile on;
  server {{ listen 127.0.0.1:{UP} backlog=4096;
    location = / {{ default_type text/plain; return 200 "{body}"; }}
    location / {{ root {work}/www; }} }} }}
""")
    (work / "nginx-proxy.conf").write_text(f"""
worker_processes 1; pid {work}/nginx-proxy.pid; error_log {work}/nginx-proxy.err warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 30000; }}
http {{ {common}
  upstream up {{ server 127.0.0.1:{UP}; keepalive 64; keepalive_requests 1000000; }}
  server {{ listen 127.0.0.1:{NGX} backlog=4096;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_max_temp_file_size 0; }} }} }}
""")
    (work / "haproxy.cfg").write_text(f"""
global
    nbthread 1
    maxconn {hap_maxconn}
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
frontend h1
    bind 127.0.0.1:{HAP}
    default_backend up
backend up
    server s1 127.0.0.1:{UP}
listen tcp
    mode tcp
    bind 127.0.0.1:{HAP_TCP}
    server s1 127.0.0.1:{UP}
""")
    (work / "report.lua").write_text("""
done = function(s, lat, req)
  local e = s.errors
  io.write(string.format("RESULT\\t%d\\t%d\\t%d\\t%d\\t%d\\t%d\\t%d\\n", s.requests, s.duration,
    lat:percentile(50), lat:percentile(99), e.connect + e.read + e.write + e.timeout, e.status, s.bytes))
end
""")
