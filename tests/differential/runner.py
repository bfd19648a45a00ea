"""Differential runner: one case file through real Envoy and through ftproxy, compared and
judged against the case's expected differences (the format and what is compared: README.md).

`python -m tests.differential.runner [CASE.yaml ...]` prints every difference of each case.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import socket
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.h2_backend import H2Backend
from tests.integration.harness import EchoUpstream
from tests.tls_certs import CertAuthority
from tests.tls_upstream import TlsHttpUpstream, server_context

from .cases import CASES_DIR, CONFIGS_DIR, Case, all_cases, load_case
from .clients import CLOSED, Observation, build_raw, send_curl, send_raw
from .proxies import PortReservation, ProxyProcess, envoy_binary, proxyctl_binary

__all__ = ["CASES_DIR", "CONFIGS_DIR", "CLOSED", "VOLATILE_HEADERS", "all_cases", "envoy_binary",
           "proxyctl_binary", "run_case"]

# The one place that says which header values change from run to run or between two
# correct proxies. Presence is still compared; only the value is masked.
VOLATILE_HEADERS = frozenset({
    "date",                             # the clock
    "x-envoy-upstream-service-time",    # a duration
    "x-request-id",                     # a fresh UUID per request
})
MASK = "<volatile>"


def _host_ipv4_addresses() -> tuple[str, ...]:
    """This machine's non-loopback IPv4 addresses: with use_remote_address and a loopback
    client, both proxies write one of them into x-forwarded-for; they change from machine to
    machine, so they are compared as `{{host_ip}}`."""
    import fcntl
    import struct
    out = []
    for _, name in socket.if_nameindex():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            packed = fcntl.ioctl(s.fileno(), 0x8915,  # SIOCGIFADDR
                                 struct.pack("256s", name.encode()[:15]))
            addr = socket.inet_ntoa(packed[20:24])
            if not addr.startswith("127."):
                out.append(addr)
        except OSError:
            pass
        finally:
            s.close()
    return tuple(out)


HOST_IPS = _host_ipv4_addresses()


def _unport(value: str, ports: dict[str, str]) -> str:
    for port, name in ports.items():
        value = re.sub(rf"(?<!\d){port}(?!\d)", name, value)
    for ip in HOST_IPS:
        value = re.sub(rf"(?<![\d.]){re.escape(ip)}(?![\d.])", "{{host_ip}}", value)
    return value


_ID = re.compile(r"(?<![0-9a-f])(?:[0-9a-f]{32}|[0-9a-f]{16})(?![0-9a-f])")


def _mask_ids(value: str, sent: str) -> str:
    """A trace context's fresh ids (16 or 32 lower-case hex digits the client did not send)
    replaced by `<id16>` / `<id32>`: its shape, flags and joined ids are still compared."""
    return _ID.sub(lambda m: m.group(0) if m.group(0) in sent else f"<id{len(m.group(0))}>", value)


def normalise(obs: Observation, proxy: ProxyProcess, volatile: frozenset[str],
              id_headers: frozenset[str] = frozenset(), sent: str = "") -> dict[str, Any]:
    ports = {str(p): f"{{{{port:{n}}}}}" for n, p in proxy.ports.items()}
    ports[str(proxy.admin_port)] = "{{admin_port}}"
    out: dict[str, Any] = {"status": obs.status}
    for name, values in obs.headers.items():
        if name in volatile or (obs.echo and name == "content-length"):
            values = [MASK for _ in values]
        elif name in id_headers:
            values = [_mask_ids(v, sent) for v in values]
        out[f"headers.{name}"] = [_unport(v, ports) for v in values]
    # The echo upstream's JSON is left out of the body: it is compared as `upstream.*`.
    out["body"] = _unport(obs.body.decode("latin-1"), ports)
    for up, reqs in obs.upstream.items():
        # One key per field, so an expected difference names exactly what differs.
        out[f"upstream.{up}.requests"] = len(reqs)
        for i, (method, path, headers, body) in enumerate(reqs):
            at = f"upstream.{up}" + (f"#{i}" if i else "")
            out[f"{at}.method"] = method
            out[f"{at}.path"] = _unport(path, ports)
            out[f"{at}.body_len"] = len(body)
            for k, v in headers.items():
                if k in id_headers:
                    v = _mask_ids(v, sent)
                out[f"{at}.headers.{k}"] = MASK if k in volatile else _unport(v, ports)
    return out


def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


@dataclass
class CaseResult:
    name: str
    requests: int
    unexpected: list[str]
    missing_expected: list[str]
    agreed: list[str]
    expected_seen: list[str]
    seconds: float

    def problems(self) -> str:
        lines = []
        if self.unexpected:
            lines.append("differences from real Envoy (envoy != ftproxy):")
            lines += ["  " + u for u in self.unexpected]
        if self.missing_expected:
            lines.append("expected differences that no longer differ (remove them from the case):")
            lines += ["  " + m for m in self.missing_expected]
        return "\n".join(lines)


class _H2Upstream:
    """A real h2c upstream (tests/h2_backend.py) seen as an EchoUpstream: `port`, `requests`
    (method, path, headers, body), `close()`."""

    def __init__(self, name: str, **options) -> None:
        self.backend = H2Backend(name=name, **options)
        self.port = self.backend.port

    @property
    def requests(self) -> list:
        return self.backend.echo_requests

    def close(self) -> None:
        self.backend.close()


def _start_upstreams(names: list[str], h2_names: list[str] = (), tls_names: list[str] = (),
                     tls_echo_names: list[str] = (), certs: dict | None = None,
                     h2_tls_names: list[str] = (), mixed_names: list[str] = ()) -> dict:
    ups: dict = {n: EchoUpstream(n) for n in names}
    ups.update((n, _H2Upstream(n)) for n in h2_names)
    # HTTP/2 over TLS, ALPN h2 only, a self-signed certificate for CN=<name>.
    ups.update((n, _H2Upstream(n, ssl_context=server_context(n, alpn=("h2",)))) for n in h2_tls_names)
    # Plaintext, h2c (prior knowledge) or HTTP/1.1 by the connection's first bytes.
    ups.update((n, _H2Upstream(n, http1_too=True)) for n in mixed_names)
    # HTTP/1.1 over TLS with a certificate for CN=<name> (tests/tls_upstream.py): for TLS a
    # listener passes through (tls_inspector + server_names + tcp_proxy).
    ups.update((n, TlsHttpUpstream(n)) for n in tls_names)
    for n in tls_echo_names:  # the echo upstream behind TLS, with the case's certificate `upstream`
        up = ups[n] = EchoUpstream(n)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*certs["upstream"])
        up.httpd.socket = ctx.wrap_socket(up.httpd.socket, server_side=True)
    return ups


def _start_grpc_authz(names: list[str]) -> dict:
    """The case's `grpc_authz_upstreams`: gRPC authorization servers (tests/grpc_authz_server.py,
    grpclib over h2c) for ext_authz's grpc_service; each CheckRequest is recorded as an upstream
    request (the checked request's method, path, headers; the call's metadata as `grpc:*`, the
    other attributes as `attr.*`)."""
    if not names:
        return {}
    from tests.grpc_authz_server import GrpcAuthzServer
    return {n: GrpcAuthzServer(n) for n in names}


def _start_ratelimit(names: list[str]) -> dict:
    """The case's `ratelimit_upstreams`: rate limit services (tests/ratelimit_server.py, grpclib
    over h2c) for the ratelimit filter's rate_limit_service; each RateLimitRequest is recorded
    as an upstream request (path `/<domain>/<descriptors>`, the call's metadata as `grpc:*`)."""
    if not names:
        return {}
    from tests.ratelimit_server import RateLimitServer
    return {n: RateLimitServer(n) for n in names}


def _make_certs(spec: dict, workdir: Path) -> dict[str, tuple[Path, Path | None]]:
    """The case's `certs`: NAME -> tests/tls_certs.CertAuthority.issue_files arguments (`names`,
    `uris`, `cn`, `client`, `kind`, `expired`, `self_signed`), issued once by one test CA and
    shared by both proxies and the clients; `ca` is the CA itself (no key)."""
    ca = CertAuthority()
    out: dict[str, tuple[Path, Path | None]] = {"ca": (ca.pem_file(workdir), None)}
    for name, kw in (spec or {}).items():
        kw = dict(kw or {})
        out[name] = ca.issue_files(workdir, name, kw.pop("names", []), **kw)
    return out


def _admin_json(proxy: ProxyProcess, path: str) -> Any:
    """An admin JSON answer with every list sorted (Envoy's order of TLS contexts in /certs
    is a hash set's)."""
    def norm(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return sorted((norm(x) for x in v), key=lambda x: json.dumps(x, sort_keys=True))
        return v
    status, body = proxy.admin(path)
    try:
        return status, norm(json.loads(body))
    except ValueError:
        return status, body


def run_case(path: Path) -> CaseResult:
    t0 = time.monotonic()
    case = load_case(path)
    workdir = Path(tempfile.mkdtemp(prefix=f"diff-{case.name}-"))
    certs = _make_certs(case.data.get("certs"), workdir) if (
        case.data.get("certs") or case.data.get("tls_echo_upstreams")) else {}
    upstreams = _start_upstreams(case.data.get("upstreams") or [], case.data.get("h2_upstreams") or [],
                                 case.data.get("tls_upstreams") or [], case.data.get("tls_echo_upstreams") or [],
                                 certs, case.data.get("h2_tls_upstreams") or [],
                                 case.data.get("mixed_upstreams") or [])
    upstreams.update(_start_grpc_authz(case.data.get("grpc_authz_upstreams") or []))
    upstreams.update(_start_ratelimit(case.data.get("ratelimit_upstreams") or []))
    proxies: list[ProxyProcess] = []
    reservation = PortReservation()
    try:
        closed_port = reservation.take()
        ports = {n: u.port for n, u in upstreams.items()}
        envoy = ProxyProcess("envoy", case, ports, closed_port, workdir, reservation, certs)
        ftp = ProxyProcess("ftproxy", case, ports, closed_port, workdir, reservation, certs)
        reservation.release()
        for p in (envoy, ftp):
            p.start()
            proxies.append(p)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            e_ready, f_ready = pool.submit(envoy.wait_ready), pool.submit(ftp.wait_ready)
            e_ready.result()
            try:
                f_ready.result()
            except RuntimeError as e:
                if not _expects_refusal(case):
                    raise
                n = len(case.data.get("requests") or [])
                if os.environ.get("DIFF_VERBOSE"):
                    _show_envoy_only(envoy, upstreams)
                return CaseResult(case.name, n, [], [], [],
                                  [f"startup: ftproxy refuses the bootstrap: {str(e)[-300:]}"],
                                  time.monotonic() - t0)
        if _expects_refusal(case):
            return _judge(case, {}, 0, [], t0)  # reports the stale `startup` entry
        return _compare_case(case, upstreams, envoy, ftp, t0)
    finally:
        reservation.release()
        for p in proxies:
            p.stop()
        for u in upstreams.values():
            u.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _show_envoy_only(envoy: ProxyProcess, upstreams) -> None:
    """What the oracle answers, for whoever builds the feature a refused case describes."""
    observations = []
    for req in envoy.substituted()["requests"]:
        obs = _send(envoy, req, upstreams)
        observations.append(obs)
        print(f"  {req['name']}: envoy {obs.status} {dict(obs.headers)} {obs.body[:200]!r}")
    _wait_for_logs((envoy, observations))
    logs = envoy.log_lines()
    for req, obs in zip(envoy.substituted()["requests"], observations):
        lines = [line for p in obs.client_ports for line in logs.get(p, [])]
        print(f"  {req['name']}: log {lines}")
    stats = envoy.stats()
    for name in envoy.substituted().get("stats") or []:
        print(f"  stat {name} = {stats.get(name)}")
    dump = os.environ.get("DIFF_DUMP_STATS")
    for name in sorted(stats) if dump else ():
        if dump in name:
            print(f"  stat {name}: envoy={stats[name]}")


def _expects_refusal(case: Case) -> bool:
    return any(e.get("key") == "startup" for e in case.data.get("expected_differences") or [])


def _send(proxy: ProxyProcess, req: dict, upstreams: dict[str, EchoUpstream]) -> Observation:
    before = {n: len(u.requests) for n, u in upstreams.items()}
    timeout = float(req.get("timeout", 5))
    if "curl" in req:
        obs = send_curl([str(a) for a in req["curl"]], timeout)
    else:
        obs = send_raw(proxy.ports[req.get("listener", "listener")], build_raw(req), timeout,
                       proxy.kept if req.get("keep_open") else None,
                       responses=int(req.get("responses", 1)),
                       half_close=bool(req.get("half_close")))
    if req.get("log_lines"):  # an internal redirect logs each stream it replaced too
        obs.log_lines = int(req["log_lines"])
    if req.get("settle"):
        # The echo upstream records a request once its body ends; a body cut short ends only
        # when the proxy closes the upstream connection, which may come after the reply.
        time.sleep(float(req["settle"]))
    for n, u in upstreams.items():
        obs.upstream[n] = list(u.requests[before[n]:])
    return obs


def _compare_case(case: Case, upstreams, envoy: ProxyProcess, ftp: ProxyProcess,
                  t0: float) -> CaseResult:
    case_volatile = case.data.get("volatile_headers") or []
    base_volatile = VOLATILE_HEADERS | frozenset(h.lower() for h in case_volatile)
    id_headers = frozenset(h.lower() for h in case.data.get("volatile_ids") or [])
    found: dict[str, tuple[Any, Any]] = {}
    observations = []
    agreed = []
    reqs_e = envoy.substituted()["requests"]
    reqs_f = ftp.substituted()["requests"]
    for req_e, req_f in zip(reqs_e, reqs_f):
        volatile = base_volatile | frozenset(h.lower() for h in req_e.get("volatile_headers") or [])
        obs_e = _send(envoy, req_e, upstreams)
        obs_f = _send(ftp, req_f, upstreams)
        observations.append((req_e["name"], obs_e, obs_f))
        sent = " ".join(str(v).lower() for v in (req_e.get("headers") or {}).values())
        d = diff(normalise(obs_e, envoy, volatile, id_headers, sent),
                 normalise(obs_f, ftp, volatile, id_headers, sent))
        ignored = tuple(req_e.get("ignore") or ())
        d = {k: v for k, v in d.items() if not k.startswith(ignored)} if ignored else d
        if os.environ.get("DIFF_VERBOSE"):
            print(f"  {req_e['name']}: envoy {obs_e.status} ftproxy {obs_f.status}")
        for k, v in d.items():
            found[f"{req_e['name']}: {k}"] = v
        if not d:
            agreed.append(req_e["name"])
    # Access logs: wait until each request's client port has a line on each side (or give up).
    _wait_for_logs((envoy, [o[1] for o in observations]), (ftp, [o[2] for o in observations]))
    logs_e, logs_f = envoy.log_lines(), ftp.log_lines()
    # A case's own log may write a proxy's port (%REQ(:AUTHORITY)%): as its placeholder.
    ports_e, ports_f = ({str(p): f"{{{{port:{n}}}}}" for n, p in proxy.ports.items()}
                        for proxy in (envoy, ftp))
    for name, obs_e, obs_f in observations:
        le = [line for p in obs_e.client_ports for line in logs_e.get(p, [])]
        lf = [line for p in obs_f.client_ports for line in logs_f.get(p, [])]
        fe = [_unport(x[1], ports_e) for x in le] or None
        ff = [_unport(x[1], ports_f) for x in lf] or None
        if fe != ff:
            found[f"{name}: log.flags"] = (fe, ff)
        de = [x[2] for x in le] or None
        dfv = [x[2] for x in lf] or None
        if de != dfv:
            found[f"{name}: log.details"] = (de, dfv)
    for admin_path in case.data.get("admin_json") or []:
        a, b = _admin_json(envoy, admin_path), _admin_json(ftp, admin_path)
        if a != b:
            found[f"admin: admin.{admin_path}"] = (a, b)
    if case.data.get("histograms"):
        time.sleep(0.5)  # Envoy shows histograms after a stats flush (the case sets the interval)
    stats_e, stats_f = envoy.stats(), ftp.stats()
    dump = os.environ.get("DIFF_DUMP_STATS")  # a substring: print those stats of both sides
    if dump:
        for name in sorted(stats_e.keys() | stats_f.keys()):
            if dump in name and stats_e.get(name, "0") + stats_f.get(name, "0") != "00":
                print(f"  stat {name}: envoy={stats_e.get(name)} ftproxy={stats_f.get(name)}")
    # Stat names may hold a proxy's own port (listener.127.0.0.1_<port>.*): each side asks for
    # its own name, the key shows the placeholder.
    e_ports = {str(p): f"{{{{port:{n}}}}}" for n, p in envoy.ports.items()}
    for stat_e, stat_f in zip(envoy.case_data.get("stats") or [], ftp.case_data.get("stats") or []):
        a, b = stats_e.get(stat_e), stats_f.get(stat_f)
        if a != b:
            found[f"stats: stats.{_unport(stat_e, e_ports)}"] = (a, b)
    histograms = zip(envoy.case_data.get("histograms") or [], ftp.case_data.get("histograms") or [])
    for h_e, h_f in histograms:
        a, b = _recorded(stats_e.get(h_e)), _recorded(stats_f.get(h_f))
        if a != b:
            found[f"stats: histograms.{_unport(h_e, e_ports)}"] = (a, b)
    return _judge(case, found, len(reqs_e), agreed, t0)


def _recorded(value: str | None) -> str | None:
    """A histogram's /stats line as 'recorded' or 'none' (its values depend on timing)."""
    if value is None:
        return None
    cumulative = re.findall(r"P[\d.]+\([^,]*,([^)]*)\)", value)
    return "recorded" if any(v.strip() != "nan" for v in cumulative) else "none"


def _judge(case: Case, found: dict[str, tuple[Any, Any]], n_requests: int, agreed: list[str],
           t0: float) -> CaseResult:
    """Match what differed against the case's `expected_differences`."""
    entries = case.data.get("expected_differences") or []
    used = [False] * len(entries)
    unexpected, seen = [], []
    for k, (ev, fv) in found.items():
        req, _, key = k.partition(": ")
        for i, e in enumerate(entries):
            if not e.get("reason"):
                raise ValueError(f"{case.path.name}: expected difference without a reason: {e}")
            if e["key"] not in (key, "*") or e.get("request", "stats") not in (req, "*"):
                continue
            if "envoy" in e and e["envoy"] != ev or "ftproxy" in e and e["ftproxy"] != fv:
                continue
            used[i] = True
            seen.append(f"{k}: envoy={ev!r} ftproxy={fv!r} -- {e['reason']}")
            break
        else:
            unexpected.append(f"{k}: envoy={ev!r} ftproxy={fv!r}")
    missing = [f"{e.get('request', 'stats')}: {e['key']} ({e['reason']})"
               for i, e in enumerate(entries) if not used[i]]
    return CaseResult(case.name, n_requests, unexpected, missing, agreed, seen,
                      time.monotonic() - t0)


def _wait_for_logs(*sides: tuple[ProxyProcess, list[Observation]], timeout: float = 1.0) -> None:
    """Until each request's client port has its lines in its proxy's access log (one per
    pipelined response read), or `timeout`. Both proxies write their logs out every 20 ms here
    (--file-flush-interval-msec); a request that leaves fewer lines (one that never reached a
    listener) costs the whole timeout, once."""
    waiting = []
    for proxy, observations in sides:
        wanted: dict[int, int] = {}
        for o in observations:
            for p in o.client_ports:
                wanted[p] = wanted.get(p, 0) + o.log_lines
        waiting.append((proxy, wanted))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_has_lines(proxy.log_lines(), wanted) for proxy, wanted in waiting):
            return
        time.sleep(0.05)


def _has_lines(logs: dict[int, list], wanted: dict[int, int]) -> bool:
    return all(len(logs.get(port, ())) >= n for port, n in wanted.items())


def main(argv: list[str]) -> int:
    """`python -m tests.differential.runner [CASE.yaml ...]`: run cases, print every difference
    (expected ones too) and each case's time."""
    paths = [Path(a) for a in argv] or all_cases()
    bad = 0
    for p in paths:
        r = run_case(p)
        print(f"== {r.name}: {r.requests} requests, {len(r.agreed)} agree on status, headers, "
              f"body and upstream, {r.seconds:.1f}s")
        for line in r.expected_seen:
            print("  expected:", line)
        if r.unexpected or r.missing_expected:
            bad += 1
            print("  " + r.problems().replace("\n", "\n  "))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
