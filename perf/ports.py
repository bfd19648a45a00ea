"""The loopback ports of the perf scripts, all derived from one base: PERF_PORT_BASE.

Job: one place that says which port each perf role listens on, so that several people can run
the scripts at once on one machine (PERF_PORT_BASE=28080, or =auto), and render the Envoy
configs of perf/configs/ with the chosen ports. The default base (18080) gives the ports the
configs name and RESULTS.md's commands use: upstream 18080, proxy listener 18090, admin 19901.
perf/ports.sh (sourced by the shell scripts) and bench.py / tls_configs.py / the probes read
the same table from here.

    python3 perf/ports.py shell            # PERF_*_PORT=... lines for `eval` (perf/ports.sh)
    python3 perf/ports.py auto             # free bases, one a line (ports.sh takes the first it can lock)
    python3 perf/ports.py render SRC DST   # SRC with the default ports replaced by this base's
Loopback only. Stdlib only (run by the system python3 too). Benchmark tool, not imported by the proxy.
"""

from __future__ import annotations

import os
import re
import socket
import sys

DEFAULT_BASE = 18080
# role -> offset from the base. A role is a port some perf script binds (or, for
# authz/ratelimit, a helper server the configs call and the user starts by hand).
OFFSETS = {
    "upstream": 0,        # nginx upstream (perf/upstream.sh, bench.py)
    "haproxy": 1,         # bench.py's reference proxies: HAProxy http, nginx, HAProxy mode tcp
    "nginx": 2,
    "haproxy_tcp": 4,
    "relay": 8,           # perf/probe_relay.py (bench.py's tcp scenario)
    "proxy": 10,          # the listener under test: configs/*.yaml, probe_floor.py, probe_lane.py
    "ab_a": 11,           # ab.sh's two versions
    "ab_b": 12,
    "authz": 15,          # perf/grpc_authz_server.py (configs/http-ext-authz-grpc.yaml)
    "ratelimit": 16,      # perf/ratelimit_server.py (configs/http-ratelimit*.yaml)
    "tls": 400,           # tls.sh / tls_configs.py: base+400 .. base+416 (TLS_OFFSETS)
    "admin": 1821,        # the proxy's admin (19901 with the default base)
    "ab_admin_a": 1831,
    "ab_admin_b": 1832,
}
# tls_configs.py's block, offsets from OFFSETS["tls"]: upstream; per system (ECDSA, RSA, plain).
TLS_OFFSETS = {"upstream": 0, "direct": (1, 2, 0), "haproxy": (3, 4, 13), "nginx": (5, 6, 14),
               "envoy": (7, 8, 15), "ftproxy": (10, 11, 16), "envoy_admin": 9, "ftproxy_admin": 12}
TLS_SPAN = 17
# Ports in perf/configs/*.yaml (written with the default base) that follow the base; any other
# port there (the tracers' collectors 14317 and 19411, where nothing need listen) stays.
RENDERED = ("upstream", "proxy", "admin", "authz", "ratelimit")
# Bases PERF_PORT_BASE=auto tries. The step is larger than a plan's span (0..1832), so two plans
# never share a port; all below the kernel's ephemeral range (32768-60999) and above 10000.
AUTO_BASES = tuple(range(10080, 30081, 2000))


def base_from_env(env: dict | None = None) -> int:
    """PERF_PORT_BASE as a number (perf/ports.sh resolves `auto` before anything reads it)."""
    raw = (env if env is not None else os.environ).get("PERF_PORT_BASE", "") or str(DEFAULT_BASE)
    if raw == "auto":
        raise SystemExit("PERF_PORT_BASE=auto is resolved by perf/ports.sh; in Python pass a number")
    base = int(raw)
    if not 1024 <= base <= 65535 - max(OFFSETS.values()) - TLS_SPAN:
        raise SystemExit(f"PERF_PORT_BASE={raw}: want 1024..{65535 - max(OFFSETS.values()) - TLS_SPAN}")
    return base


def plan(base: int | None = None) -> dict[str, int]:
    """role -> port for `base` (default: PERF_PORT_BASE or 18080)."""
    b = base_from_env() if base is None else base
    return {role: b + off for role, off in OFFSETS.items()}


def all_ports(base: int) -> list[int]:
    p = plan(base)
    return sorted(set(p.values()) | set(range(p["tls"], p["tls"] + TLS_SPAN)))


def render(text: str, base: int) -> str:
    """A config written with the default ports, with `base`'s ports instead."""
    old, new = plan(DEFAULT_BASE), plan(base)
    table = {str(old[r]): str(new[r]) for r in RENDERED}
    return re.sub(r"\b(%s)\b" % "|".join(table), lambda m: table[m.group(1)], text)


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port and we could bind it (as nginx/ftproxy would)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_bases() -> list[int]:
    return [b for b in AUTO_BASES if all(port_free(p) for p in all_ports(b))]


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else ""
    if cmd == "shell":
        base = base_from_env()
        print(f"PERF_PORT_BASE={base}")
        for role, port in plan(base).items():
            print(f"PERF_{role.upper()}_PORT={port}")
        return 0
    if cmd == "auto":
        print("\n".join(map(str, free_bases())))
        return 0
    if cmd == "render" and len(argv) == 3:
        with open(argv[1]) as f:
            text = render(f.read(), base_from_env())
        with open(argv[2], "w") as f:
            f.write(text)
        return 0
    if cmd == "free" and len(argv) > 1:  # free PORT...: exit 1 naming the first busy one
        busy = [p for p in map(int, argv[1:]) if not port_free(p)]
        if busy:
            print(" ".join(map(str, busy)))
            return 1
        return 0
    print(__doc__.split("\n\n")[2], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
