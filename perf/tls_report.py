"""Tables and JSON of a perf/tls.sh run (TLS termination: ftproxy beside HAProxy, nginx, Envoy).

Job: read the rows tls.sh wrote (env ROWS: case, system, round, metrics..., proxy user and
system clock ticks; PROBES: what each system negotiated; STATS: Envoy's and ftproxy's ssl
counters), take per-system medians over the rounds, the ratios against HAProxy and Envoy
(ratio of medians, and with several rounds the paired ratio: the median of the per-round
ratios, which cancels the VM's drift), the issue's targets, then print markdown and write
the JSON to env OUT. Benchmark tool, not imported by the proxy; asserts nothing.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
from collections import defaultdict

E = os.environ
CLK = int(E.get("CLK_TCK", "100"))
WRK_CASES = {"ka": "HTTPS keep-alive, 100 B body (wrk -t1 -c{CONNS} -d{DURATION}, ECDSA P-256)",
             "ka-plain": "Plain HTTP keep-alive through the same processes (wrk -t1 -c{CONNS} -d{DURATION}): the reference for what TLS adds",
             "hs-ecdsa": "Full handshake per request, ECDSA P-256 (wrk -t1 -c{HS_CONNS} -d{DURATION}, `Connection: close`, no resumption)",
             "hs-rsa": "Full handshake per request, RSA 2048 (wrk -t1 -c{HS_CONNS} -d{DURATION}, `Connection: close`, no resumption)"}
BULK = "TLS bulk: {BULK_REPS} x {BULK_MB} MiB over one TLS connection (curl -k), ECDSA P-256"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def load() -> dict:
    """case -> system -> list of per-round dicts."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for line in open(E["ROWS"]):
        f = line.rstrip("\n").split("\t")
        case, system, rnd = f[0], f[1], int(f[2])
        ut, st = (int(f[-2]) if f[-2] else None), (int(f[-1]) if f[-1] else None)
        m = f[3:-2]
        if case == "bulk":
            b, secs, mbps, bad = int(m[0]), float(m[1]), float(m[2]), int(m[3])
            r = {"round": rnd, "bytes": b, "seconds": secs, "MBps": mbps, "bad": bad}
        else:
            if len(m) < 6 or not m[0]:
                r = {"round": rnd, "requests": 0, "seconds": 0, "rps": 0, "errors": -1}
            else:
                req, dur, p50, p99, errs, non2xx = (int(x) for x in m[:6])
                secs = dur / 1e6
                r = {"round": rnd, "requests": req, "seconds": secs, "rps": req / secs if secs else 0,
                     "p50_ms": p50 / 1e3, "p99_ms": p99 / 1e3, "errors": errs, "non2xx": non2xx}
        if ut is not None:
            cpu = (ut + st) / CLK
            r["proxy_cpu_s"] = cpu
            r["proxy_cpu_pct"] = 100 * cpu / r["seconds"] if r["seconds"] else None
            r["sys_share_pct"] = 100 * st / (ut + st) if ut + st else None
            if r.get("requests"):
                r["proxy_cpu_us_per_req"] = cpu * 1e6 / r["requests"]
                # what one core of the proxy would sustain at this cost: the handshake rate
                # the proxy can reach when the client (CPU 1) is the cap of the measured rate
                r["per_core"] = 1e6 / r["proxy_cpu_us_per_req"] if cpu else None
        out[case][system].append(r)
    return out


def summarize(runs_by_system: dict, *keys: str) -> dict:
    res = {}
    for system, runs in runs_by_system.items():
        s = {k: med([r.get(k) for r in runs]) for k in runs[0] if k != "round"}
        s["runs"] = runs
        res[system] = s
    for ref in ("haproxy", "envoy", "direct"):
        if ref not in res:
            continue
        for system, s in res.items():
            for k in keys:
                if s.get(k) is not None and res[ref].get(k):
                    s[f"{k}_vs_{ref}"] = s[k] / res[ref][k]
                    pairs = {r["round"]: r.get(k) for r in res[ref]["runs"]}
                    ratios = [r[k] / pairs[r["round"]] for r in s["runs"]
                              if r.get(k) is not None and pairs.get(r["round"])]
                    if len(ratios) > 1:
                        s[f"{k}_vs_{ref}_paired"] = statistics.median(ratios)
    return res


def fmt(v, spec=",.0f"):
    return "-" if v is None else format(v, spec)


def ratio(s: dict, k: str, ref: str) -> str:
    v = s.get(f"{k}_vs_{ref}")
    if v is None:
        return "-"
    p = s.get(f"{k}_vs_{ref}_paired")
    return f"{v:.2f}" + (f" ({p:.2f})" if p is not None else "")


def main() -> None:
    data = load()
    fill = {k: E.get(k, "") for k in ("CONNS", "HS_CONNS", "DURATION", "BULK_MB", "BULK_REPS")}
    results: dict = {}
    lines = [f"# perf/tls.sh, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ}", "",
             f"- Command: `{E.get('COMMAND', 'perf/tls.sh')}` (RUNS={E.get('RUNS')}; medians; "
             "ratio columns: ratio of medians, and in brackets with RUNS > 1 the paired ratio)",
             f"- Machine: {E.get('CPU_MODEL', '?')}, {os.cpu_count()} CPUs, Linux {platform.release()}; "
             "server under test on CPU 0, wrk/curl and the upstream nginx on CPU 1",
             f"- ftproxy: `{E.get('FTPROXY_CMD', '')}`",
             f"- Versions: {E.get('VERSIONS', '')}",
             f"- Client TLS 1.3 suites: {E.get('CLIENT_CIPHERS') or 'client defaults'}",
             "- TLS libraries: HAProxy, nginx, wrk, curl: the system OpenSSL; Envoy: BoringSSL (built in); "
             "ftproxy: pyOpenSSL over the OpenSSL bundled in the `cryptography` wheel", ""]
    probes = [ln.rstrip("\n").split("\t") for ln in open(E["PROBES"]) if ln.strip()]
    if probes:
        lines += ["Negotiated (openssl s_client; 2nd connection offers the 1st one's session):", "",
                  "| system | certificate | protocol | cipher | group | 1st / 2nd connection |", "|---|---|---|---|---|---|"]
        for p in probes:
            p += [""] * (7 - len(p))
            lines.append(f"| {p[0]} | {p[1]} | {p[4]} | {p[5]} | {p[6]} | {p[2]} / {p[3]} |")
        lines.append("")
        results["negotiated"] = [dict(zip(("system", "cert", "first", "second", "protocol", "cipher", "group"), p))
                                 for p in probes]
    for case, title in WRK_CASES.items():
        if case not in data:
            continue
        s = results[case] = summarize(data[case], "rps", "proxy_cpu_us_per_req", "per_core")
        hs = case.startswith("hs")
        rate = "handshakes/s" if hs else "req/s"
        lines += [f"### {title.format(**fill)}", "",
                  f"| system | {rate} | vs haproxy | vs envoy | p50 ms | p99 ms | proxy CPU µs/req | vs haproxy | vs envoy "
                  "| CPU % | sys share % | errors |" + (" per proxy core/s | vs haproxy | vs envoy |" if hs else ""),
                  "|" + "---|" * (15 if hs else 12)]
        for system, r in s.items():
            extra = (f" {fmt(r.get('per_core'))} | {ratio(r, 'per_core', 'haproxy')} | {ratio(r, 'per_core', 'envoy')} |"
                     if hs else "")
            lines.append(f"| {system} | {fmt(r.get('rps'))} | {ratio(r, 'rps', 'haproxy')} | {ratio(r, 'rps', 'envoy')} "
                         f"| {fmt(r.get('p50_ms'), '.2f')} | {fmt(r.get('p99_ms'), '.2f')} "
                         f"| {fmt(r.get('proxy_cpu_us_per_req'), '.1f')} | {ratio(r, 'proxy_cpu_us_per_req', 'haproxy')} "
                         f"| {ratio(r, 'proxy_cpu_us_per_req', 'envoy')} | {fmt(r.get('proxy_cpu_pct'))} "
                         f"| {fmt(r.get('sys_share_pct'))} | {fmt((r.get('errors') or 0) + (r.get('non2xx') or 0))} |" + extra)
        if hs:
            lines += ["", "(per proxy core/s = 10⁶ / proxy CPU µs per handshake: the rate one core of the proxy "
                      "sustains at that cost; the measured rate is capped by CPU 1 when the proxy's CPU % is "
                      "well under 100)"]
        lines.append("")
    if "ka" in results and "ka-plain" in results:
        added = {}
        lines += ["### What TLS adds per keep-alive request (proxy CPU µs: ka − ka-plain)", "",
                  "| system | plain µs/req | TLS µs/req | added by TLS µs/req | TLS / plain | added vs haproxy |",
                  "|---|---|---|---|---|---|"]
        for system, r in results["ka"].items():
            plain = results["ka-plain"].get(system, {}).get("proxy_cpu_us_per_req")
            tls = r.get("proxy_cpu_us_per_req")
            if plain is None or tls is None:
                continue
            added[system] = tls - plain
        for system, a in added.items():
            plain = results["ka-plain"][system]["proxy_cpu_us_per_req"]
            ref = added.get("haproxy")
            lines.append(f"| {system} | {plain:.1f} | {plain + a:.1f} | {a:.1f} | {(plain + a) / plain:.2f} "
                         f"| {a / ref:.2f} |" if ref else f"| {system} | {plain:.1f} | {plain + a:.1f} | {a:.1f} "
                         f"| {(plain + a) / plain:.2f} | - |")
        lines.append("")
        results["tls_added_us_per_req"] = added
    if "bulk" in data:
        s = results["bulk"] = summarize(data["bulk"], "MBps")
        lines += [f"### {BULK.format(**fill)}", "",
                  "| system | MB/s | vs direct | vs haproxy | vs envoy | proxy CPU % | bad |", "|---|---|---|---|---|---|---|"]
        for system, r in s.items():
            lines.append(f"| {system} | {fmt(r.get('MBps'))} | {ratio(r, 'MBps', 'direct')} | {ratio(r, 'MBps', 'haproxy')} "
                         f"| {ratio(r, 'MBps', 'envoy')} | {fmt(r.get('proxy_cpu_pct'))} | {fmt(r.get('bad'))} |")
        lines.append("")
    # The issue's targets, ftproxy against HAProxy.
    ft = "ftproxy"
    targets = []

    def target(name, case, key, op, bound):
        r = results.get(case, {}).get(ft, {})
        v = r.get(f"{key}_vs_haproxy_paired", r.get(f"{key}_vs_haproxy"))
        if v is None:
            return
        ok = v <= bound if op == "<=" else v >= bound
        targets.append({"target": name, "ratio": v, "bound": f"{op} {bound}", "met": ok})
    target("keep-alive CPU/request ≤ 2× HAProxy", "ka", "proxy_cpu_us_per_req", "<=", 2.0)
    target("ECDSA handshakes/s ≥ 0.8× HAProxy", "hs-ecdsa", "rps", ">=", 0.8)
    target("RSA handshakes/s ≥ 0.8× HAProxy", "hs-rsa", "rps", ">=", 0.8)
    target("ECDSA handshakes per proxy core ≥ 0.8× HAProxy", "hs-ecdsa", "per_core", ">=", 0.8)
    target("RSA handshakes per proxy core ≥ 0.8× HAProxy", "hs-rsa", "per_core", ">=", 0.8)
    target("bulk MB/s ≥ 0.8× HAProxy", "bulk", "MBps", ">=", 0.8)
    if targets:
        lines += ["### Targets (ftproxy vs HAProxy; paired ratio when RUNS > 1)", "",
                  "| target | ftproxy / HAProxy | status |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['ratio']:.2f} | {'met' if t['met'] else '**missed**'} |" for t in targets]
        lines.append("")
        results["targets"] = targets
    stats = [ln.split() for ln in open(E["STATS"]) if ln.strip()]
    if stats:
        lines += ["Servers' ssl counters at the end (all cases, warm-ups and probes included): "
                  + "; ".join(f"{s[0]} {s[1].rstrip(':')} {s[2]}" for s in stats), ""]
        results["ssl_stats"] = [{"system": s[0], "stat": s[1].rstrip(":"), "value": int(s[2])} for s in stats]
    results["meta"] = {k: E.get(k) for k in ("COMMAND", "RUNS", "DURATION", "CONNS", "HS_CONNS", "BULK_MB",
                                             "BULK_REPS", "CLIENT_CIPHERS", "VERSIONS", "CPU_MODEL", "FTPROXY_CMD")}
    results["meta"]["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(E["OUT"], "w") as f:
        json.dump(results, f, indent=1)
    print("\n".join(lines))
    print(f"JSON: {E['OUT']}", file=sys.stderr)


if __name__ == "__main__":
    main()
