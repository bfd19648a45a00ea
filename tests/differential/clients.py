"""What a client sees: one request over a raw socket or through curl, as an `Observation`."""

from __future__ import annotations

import errno
import itertools
import json
import random
import re
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.integration.servers import new_reader, read_response

from ..ports import port_slice

CLOSED = "<closed without a response>"


@dataclass
class Observation:
    """What one client saw for one request, through one proxy."""
    client_ports: list[int] = field(default_factory=list)
    status: Any = None
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""
    upstream: dict[str, list] = field(default_factory=dict)
    error: str | None = None
    echo: bool = False  # a body was the echo upstream's JSON (compared as what it received)
    log_lines: int = 1  # access-log lines the request leaves (one per pipelined response read)


def is_echo_json(body: bytes) -> bool:
    """Whether `body` is the echo upstream's JSON (whatever content-type a route set)."""
    if not body.startswith(b"{"):
        return False
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and {"server", "method", "headers"} <= doc.keys()


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


# The runner finds each request's access-log line by its client port, so a case must never use
# one client port twice. Ports are handed out in turn from a range below the kernel's ephemeral
# range (where the OS picks ports for everything else), skipping one that is taken.
_PORT_LO, _PORT_HI = port_slice(20000, 5990, per_worker=False)  # proxies.PortReservation takes 26000-31999
_PORT_BASE, _PORT_SPAN = _PORT_LO, _PORT_HI - _PORT_LO
_next_port = itertools.count(random.randrange(_PORT_SPAN))
_port_lock = threading.Lock()  # guards _next_port (cases may send from several threads)


def _fresh_port() -> int:
    with _port_lock:
        return _PORT_BASE + next(_next_port) % _PORT_SPAN


def _bindable_port() -> int:
    """A fresh client port that can be bound now. One a connection closed from the client's end
    within the last minute is still in TIME_WAIT, and runs of hundreds of them are common (each
    raw request takes the next port, and the other test processes draw from the same range):
    curl's `--local-port` does not skip such a port with SO_REUSEADDR, it fails its bind
    ("bind failed with errno 98", exit 45) once every port of its range is one."""
    for _ in range(_PORT_SPAN):
        port = _fresh_port()
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            probe.close()
        return port
    raise RuntimeError(f"no bindable client port in {_PORT_LO}-{_PORT_HI - 1}")


def _connect(port: int, timeout: float) -> socket.socket:
    """A connection to 127.0.0.1:`port` from a client port not used before in this run."""
    for _ in range(100):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.bind(("127.0.0.1", _fresh_port()))
            s.connect(("127.0.0.1", port))
            return s
        except OSError as e:
            s.close()
            if e.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                raise  # refused, timed out...: the proxy's answer, not a busy client port
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def _method_of(raw: bytes) -> str:
    return raw.split(b" ", 1)[0].decode("latin-1", "replace")


def send_raw(port: int, raw: bytes, timeout: float, keep: list | None = None,
             responses: int = 1, half_close: bool = False) -> Observation:
    """Send `raw` on a new connection and read one response, or `responses` of them (pipelined
    requests, or a CONNECT and what answers the request sent through its tunnel: `status` is
    then the list of statuses, CLOSED where the connection ended first;
    headers and non-echo bodies are gathered over all of them). `half_close` shuts the write
    side after sending. With `keep` (a list), the connection is left open and appended to it
    (closed at the end of the case)."""
    obs = Observation()
    s = _connect(port, timeout)
    statuses: list = []
    try:
        obs.client_ports.append(s.getsockname()[1])
        reader = new_reader(s)
        try:
            if half_close:
                # The bytes and the FIN in one segment (TCP_CORK holds them until shutdown()
                # pushes both): the proxy always reads them together. Sent apart, a client
                # thread preempted between the two lets the proxy answer before it sees the
                # FIN, or not, as the machine's load decides.
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            s.sendall(raw)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            method = _method_of(raw)
            for _ in range(responses):
                resp = read_response(s, method, reader)
                if method == "CONNECT" and 200 <= resp.status < 300:
                    method = "GET"  # what follows comes through the tunnel
                statuses.append(resp.status)
                for k, v in resp.headers:
                    obs.headers.setdefault(k, []).append(v)
                if is_echo_json(resp.body):
                    obs.echo = True
                else:
                    obs.body += resp.body
        except (ConnectionError, socket.timeout, OSError) as e:
            statuses.append(CLOSED)
            obs.error = type(e).__name__
        obs.status = statuses if responses > 1 else statuses[0]
        if _method_of(raw) != "CONNECT":
            obs.log_lines = max(1, sum(1 for st in statuses if st != CLOSED))
        return obs
    finally:
        if keep is not None and CLOSED not in statuses:
            keep.append(s)
        else:
            s.close()


def send_curl(args: list[str], timeout: float) -> Observation:
    obs = Observation()
    marker = "\n@@diff-local-port=%{local_port}@@"
    first = _bindable_port()
    for _ in range(9):  # a range of ten fresh ports: curl takes the first one free
        _fresh_port()
    last = min(first + 9, _PORT_HI - 1)
    cmd = ["curl", "-sS", "-i", "--max-time", str(timeout), "--local-port", f"{first}-{last}",
           "-w", marker, *args]
    out = subprocess.run(cmd, capture_output=True, timeout=timeout + 5)
    data = out.stdout
    m = re.search(rb"\n@@diff-local-port=(\d+)@@$", data)
    if m:
        obs.client_ports.append(int(m.group(1)))
        data = data[:m.start()]
    if out.returncode == 45:  # CURLE_INTERFACE_FAILED: no client port; the proxy saw nothing
        raise RuntimeError(f"curl could not bind a client port in {first}-{last}: {out.stderr!r}")
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
    if is_echo_json(rest):
        obs.echo = True
    else:
        obs.body = rest
    return obs
