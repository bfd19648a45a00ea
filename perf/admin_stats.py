"""The requests a running ftproxy (or Envoy) has served, from its own admin /stats.

Job: give perf/instr_count.sh and perf/bytecode_count.sh the number to divide by. wrk counts
the requests of its own run, which is not the instrumented window: instrumentation is switched
on and off by signals that take effect a moment later (under valgrind, seconds on a loaded
machine), and requests still in flight when wrk stops are served but not counted. So the
scripts read the proxy's count with no load running, before switching the count on and after
switching it off, and divide by the difference.

    python perf/admin_stats.py CONFIG     # waits until idle, prints downstream_rq_total

It waits (up to --timeout s) until every HTTP connection manager is idle (no active downstream
request or connection), then prints the sum of `http.<stat_prefix>.downstream_rq_total` over
them (the admin's own `http.admin.*` left out). The admin address is read from CONFIG. Exit 3
when CONFIG has no admin (the caller falls back to wrk's count).
Loopback only. Benchmark tool, not imported by the proxy.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import urllib.request

import yaml

STAT = re.compile(r"^http\.(?P<prefix>.+)\.downstream_(?P<name>rq_total|rq_active|cx_active): (?P<v>\d+)$", re.M)
FILTER = r"^http\..*\.downstream_(rq_total|rq_active|cx_active)$"


def admin_port(config_path: str) -> int | None:
    with open(config_path) as f:
        doc = yaml.safe_load(f) or {}
    try:
        return int(doc["admin"]["address"]["socket_address"]["port_value"])
    except (KeyError, TypeError):
        return None


def read(port: int) -> dict[str, int]:
    """rq_total / rq_active / cx_active summed over the HCMs (not the admin's)."""
    url = f"http://127.0.0.1:{port}/stats?filter=" + urllib.request.quote(FILTER)
    with urllib.request.urlopen(url, timeout=60) as r:
        text = r.read().decode()
    sums = {"rq_total": 0, "rq_active": 0, "cx_active": 0}
    for m in STAT.finditer(text):
        if m["prefix"] != "admin":
            sums[m["name"]] += int(m["v"])
    return sums


def served_when_idle(port: int, timeout: float) -> dict[str, int]:
    end = time.monotonic() + timeout
    while True:
        s = read(port)
        if s["rq_active"] == 0 and s["cx_active"] == 0:
            return s
        if time.monotonic() > end:
            raise SystemExit(f"admin_stats: not idle after {timeout:.0f} s: {s}")
        time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--timeout", type=float, default=120.0)
    a = ap.parse_args()
    port = admin_port(a.config)
    if port is None:
        print(f"admin_stats: {a.config} has no admin address", file=sys.stderr)
        return 3
    print(served_when_idle(port, a.timeout)["rq_total"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
