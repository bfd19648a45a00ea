"""Active health checking: Envoy's HTTP and TCP health checkers, on the main thread.

Job: for each cluster with `health_checks`, one session per (checker, host) sends a check every
interval over its own non-blocking socket registered with the main Dispatcher, and keeps
Envoy's state rules (HealthCheckerImplBase::ActiveHealthCheckSession):
- a host starts `/failed_active_hc`; its first passing check makes it healthy at once, later
  it takes `healthy_threshold` consecutive passes;
- an HTTP status neither expected nor retriable fails it at once; network failures, timeouts
  and retriable statuses count toward `unhealthy_threshold`;
- `x-envoy-immediate-health-check-fail` on a failing HTTP answer also sets
  `/excluded_via_immediate_hc_fail` (cleared when the host turns healthy); `x-envoy-degraded`
  on a passing one sets `/degraded_active_hc`; a timeout of a failed host sets
  `/active_hc_timeout`;
- the next check comes after `no_traffic_interval` (`no_traffic_healthy_interval` for a
  healthy host) until the cluster opened its first upstream connection, then `interval`,
  `unhealthy_interval`, or the edge intervals while a transition is pending; plus jitter.
Stats `cluster.<name>.health_check.{attempt,success,failure,passive_failure,network_failure,
verify_cluster}` (counters) and `.healthy`, `.degraded` (gauges); events to `event_log_path`
as Envoy's HealthCheckEventLoggerImpl writes them (one JSON object per line).

The host flags live in one `HostHealth` per host shared by the cluster's checkers (as Envoy's
flags on the Host); when a host's flags change the owner's `on_change(cluster)` is called and
it publishes new immutable snapshots (cluster_manager). The check logic (`Session`) does no
I/O itself: `HttpProbe` and `TcpProbe` own the sockets.

Thread affinity: main thread only (the Dispatcher's owner); no lock needed. Must not: block
(sockets are non-blocking; connect completes through the loop), touch worker state.
"""

from __future__ import annotations

import datetime
import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import httptools
from h2 import events as h2events
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from proxy.http.codec.hpack_codec import install as install_hpack
from proxy.http.headers import Headers
from proxy.router.header_mutation import apply_mutations
from proxy.threads.client_socket import ClientSocket as _Socket

from .health_check_config import HealthCheckConfig
from .host import Host

__all__ = ["ClusterHealthChecker", "HostHealth", "payload_match"]

log = logging.getLogger("proxy.upstream.health_checker")

# Envoy's HealthCheckFailureType names.
ACTIVE, PASSIVE, NETWORK, NETWORK_TIMEOUT = "ACTIVE", "PASSIVE", "NETWORK", "NETWORK_TIMEOUT"
# Envoy's HealthTransition.
UNCHANGED, CHANGED, CHANGE_PENDING = 0, 1, 2

_USER_AGENT = b"Envoy/HC"


def payload_match(segments: tuple[bytes, ...], data: bytes | bytearray) -> bool:
    """Envoy's PayloadMatcher::match: every segment found in order, anywhere after the last."""
    start = 0
    for seg in segments:
        i = data.find(seg, start)
        if i < 0:
            return False
        start = i + len(seg)
    return True


class HostHealth:
    """One host's active-HC flags, shared by all checkers of its cluster (Envoy's Host flags)."""

    __slots__ = ("failed", "degraded", "timeout", "excluded")

    def __init__(self) -> None:
        self.failed = True      # /failed_active_hc until the first pass
        self.degraded = False
        self.timeout = False
        self.excluded = False

    def apply(self, host: Host) -> Host:
        return replace(host, failed_active_hc=self.failed, degraded_active_hc=self.degraded,
                       active_hc_timeout=self.timeout, excluded_via_immediate_hc_fail=self.excluded)


class _Stats:
    __slots__ = ("attempt", "success", "failure", "passive_failure", "network_failure",
                 "verify_cluster", "healthy", "degraded")

    def __init__(self, store: Any, cluster: str) -> None:
        p = f"cluster.{cluster}.health_check."
        for n in ("attempt", "success", "failure", "passive_failure", "network_failure", "verify_cluster"):
            setattr(self, n, store.counter(p + n))
        self.healthy = store.gauge(p + "healthy")
        self.degraded = store.gauge(p + "degraded")


class EventLogger:
    """Envoy's HealthCheckEventLoggerImpl: one JSON HealthCheckEvent per line (fields in proto
    field order, as Envoy's JSON printer writes them), appended to `path`."""

    def __init__(self, path: str, clock: Callable[[], float]) -> None:
        self.path = path
        self.clock = clock

    def _write(self, kind: str, host: Host, cluster: str, key: str, body: dict) -> None:
        ts = datetime.datetime.fromtimestamp(self.clock(), datetime.timezone.utc)
        stamp = ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
        event: dict[str, Any] = {
            "health_checker_type": kind,
            "host": {"socket_address": {"protocol": "TCP", "address": host.address,
                                        "port_value": host.port, "resolver_name": "",
                                        "ipv4_compat": False, "network_namespace_filepath": ""}},
            "cluster_name": cluster,
        }
        # Proto field numbers: eject 4, add_healthy 5, timestamp 6, failure 7, degraded 8,
        # no_longer_degraded 9, successful 12; locality 11.
        if key in ("eject_unhealthy_event", "add_healthy_event"):
            event[key] = body
            event["timestamp"] = stamp
        else:
            event["timestamp"] = stamp
            event[key] = body
        event["locality"] = {"region": "", "zone": "", "sub_zone": ""}
        line = json.dumps(event, separators=(",", ":")) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as e:
            log.warning("health check event log %s: %s", self.path, e)

    def eject(self, kind, host, cluster, failure_type, status) -> None:
        # Every checker type writes http_status_code (0 when there was none, as Envoy's TCP).
        body = {"failure_type": failure_type, "http_status_code": status}
        self._write(kind, host, cluster, "eject_unhealthy_event", body)

    def add_healthy(self, kind, host, cluster, first_check) -> None:
        self._write(kind, host, cluster, "add_healthy_event", {"first_check": first_check})

    def unhealthy(self, kind, host, cluster, failure_type, first_check, status) -> None:
        body = {"failure_type": failure_type, "first_check": first_check, "http_status_code": status}
        self._write(kind, host, cluster, "health_check_failure_event", body)

    def success(self, kind, host, cluster) -> None:
        self._write(kind, host, cluster, "successful_health_check_event", {})

    def degraded(self, kind, host, cluster) -> None:
        self._write(kind, host, cluster, "degraded_healthy_host", {})

    def no_longer_degraded(self, kind, host, cluster) -> None:
        self._write(kind, host, cluster, "no_longer_degraded_host", {})


# -- sockets ---------------------------------------------------------------------------------

# -- probes: one check's I/O ---------------------------------------------------------------

class HttpProbe:
    """HttpActiveHealthCheckSession's I/O: an HTTP/1.1 client connection kept between checks
    (reuse_connection), one request per interval. The request's bytes are built once (its
    headers do not change between checks); answers are parsed with httptools (llhttp)."""

    def __init__(self, session: "Session") -> None:
        self.s = session
        self.conn: _Socket | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.in_flight = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.http10 = False
        self.body = bytearray()
        self.complete = False
        check = session.config.http
        self.head_only = check.method == "HEAD"
        headers = Headers([(b"host", session.hostname.encode("latin-1")), (b"user-agent", _USER_AGENT)])
        if check.headers:
            apply_mutations(check.headers, headers, _HC_INFO)
        self.request = b"".join(
            [b"%s %s HTTP/1.1\r\n" % (check.method.encode(), check.path.encode("latin-1"))]
            + [b"%s: %s\r\n" % (k, v) for k, v in headers.items()] + [b"\r\n"])

    def start(self) -> None:
        s = self.s
        if self.conn is None:
            self.conn = _Socket(s.dispatcher, s.target, lambda: None, self._on_data, self._on_closed)
            self.parser = None
        if self.parser is None:
            self.parser = httptools.HttpResponseParser(self)
        self.in_flight = True
        self.status, self.headers, self.body, self.complete = 0, [], bytearray(), False
        self.conn.write(self.request)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        self.http10 = self.parser.get_http_version() == "1.0"
        if self.head_only:  # a HEAD answer has no body, whatever its content-length says
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.s.config.http.receive:
            self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    def _on_data(self, data: bytes) -> None:
        if not self.in_flight or self.parser is None:
            self.close()   # bytes nobody asked for: the connection is not reusable
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail_network()
            return
        if self.complete:
            if self.head_only:
                self.parser = None   # the next answer starts a fresh parse
            self._complete()

    def _header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def _complete(self) -> None:
        """onResponseComplete: the result, then close unless the connection may be reused."""
        self.in_flight = False
        s, check = self.s, self.s.config.http
        status = self.status
        immediate = self._header(b"x-envoy-immediate-health-check-fail") is not None
        result = None
        if check.receive and not payload_match(check.receive, self.body):
            result = "failed"
        elif not any(a <= status < b for a, b in check.expected_statuses):
            result = "retriable" if any(a <= status < b for a, b in check.retriable_statuses) else "failed"
        if result is not None and immediate:
            s.health.excluded = True
        if (not s.config.reuse_connection or self.http10
                or (self._header(b"connection") or b"").lower() == b"close"
                or (self._header(b"proxy-connection") or b"").lower() == b"close"):
            self.close()
        if result is None:
            s.handle_success(self._header(b"x-envoy-degraded") is not None, status)
        else:
            s.handle_failure(ACTIVE, result == "retriable", status)

    def _on_closed(self) -> None:
        self.conn = None
        self.parser = None
        if self.in_flight:  # onResetStream: a close before the answer
            self.in_flight = False
            self.s.handle_failure(NETWORK, False, 0)

    def _fail_network(self) -> None:
        self.close()
        self.s.handle_failure(NETWORK, False, 0)

    def timeout(self) -> None:
        self.close()

    def close(self) -> None:
        self.in_flight = False
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.parser = None



class H2Probe:
    """The HTTP/2 (h2c, prior knowledge) checks: `codec_client_type: HTTP2` HTTP checks and
    gRPC checks (grpc.health.v1.Health/Check, GrpcActiveHealthCheckSession's rules: a pass is
    grpc-status 0 with a SERVING answer; any other answer fails the host at once). One
    connection per session, kept between checks (reuse_connection), a new stream per check;
    a GOAWAY(NO_ERROR) lets the check in flight finish, then the connection is replaced."""

    def __init__(self, session: "Session") -> None:
        self.s = session
        cfg = session.config
        self.grpc = cfg.grpc
        self.conn: _Socket | None = None
        self.h2: H2Connection | None = None
        self.stream_id = 0
        self.in_flight = False
        self.reuse = cfg.reuse_connection
        self._reset_response()
        if self.grpc is not None:
            pseudo = [(b":method", b"POST"), (b":scheme", b"http"),
                      (b":authority", session.hostname.encode("latin-1")),
                      (b":path", b"/grpc.health.v1.Health/Check")]
            regular = Headers([(b"content-type", b"application/grpc"), (b"te", b"trailers"),
                               (b"user-agent", _USER_AGENT),
                               (b"grpc-timeout", b"%dm" % int(cfg.timeout * 1000))])
            mutations = self.grpc.headers
            msg = b""
            if self.grpc.service_name:
                name = self.grpc.service_name.encode()
                msg = b"\x0a" + _varint(len(name)) + name
            self.body: bytes | None = b"\x00" + len(msg).to_bytes(4, "big") + msg
        else:
            check = cfg.http
            pseudo = [(b":method", check.method.encode()), (b":scheme", b"http"),
                      (b":authority", session.hostname.encode("latin-1")),
                      (b":path", check.path.encode("latin-1"))]
            regular = Headers([(b"user-agent", _USER_AGENT)])
            mutations = check.headers
            self.body = None
        if mutations:
            apply_mutations(mutations, regular, _HC_INFO)
        self.headers_out = pseudo + list(regular.items())

    def _reset_response(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.data = bytearray()

    def start(self) -> None:
        s = self.s
        if self.conn is None:
            self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
            install_hpack(self.h2)
            self.h2.initiate_connection()
            self.conn = _Socket(s.dispatcher, s.target, lambda: None, self._on_data, self._on_closed)
            self.reuse = s.config.reuse_connection
        h2c = self.h2
        assert h2c is not None
        self._reset_response()
        self.stream_id = sid = h2c.get_next_available_stream_id()
        self.in_flight = True
        h2c.send_headers(sid, self.headers_out, end_stream=self.body is None)
        if self.body is not None:
            h2c.send_data(sid, self.body, end_stream=True)
        self._flush()

    def _flush(self) -> None:
        if self.conn is not None and self.h2 is not None:
            out = self.h2.data_to_send()
            if out:
                self.conn.write(out)

    def _on_data(self, data: bytes) -> None:
        h2c = self.h2
        if h2c is None:
            return
        try:
            events = h2c.receive_data(data)
        except H2Error:
            self._fail(NETWORK)
            return
        for ev in events:
            if self.h2 is None:
                return   # closed while handling an earlier event
            sid = getattr(ev, "stream_id", None)
            if isinstance(ev, h2events.ResponseReceived) and sid == self.stream_id:
                self.headers = [(k.lower(), v) for k, v in ev.headers]
                for k, v in self.headers:
                    if k == b":status":
                        self.status = int(v)
            elif isinstance(ev, h2events.TrailersReceived) and sid == self.stream_id:
                self.trailers = [(k.lower(), v) for k, v in ev.headers]
            elif isinstance(ev, h2events.DataReceived):
                h2c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if sid == self.stream_id:
                    self.data += ev.data
            elif isinstance(ev, h2events.StreamEnded) and sid == self.stream_id and self.in_flight:
                self._complete()
            elif isinstance(ev, h2events.StreamReset) and sid == self.stream_id and self.in_flight:
                self.in_flight = False
                if not self.reuse:
                    self.close()
                self.s.handle_failure(NETWORK, False, 0)
            elif isinstance(ev, h2events.ConnectionTerminated):
                if self.in_flight and ev.error_code == 0 and (ev.last_stream_id or 0) >= self.stream_id:
                    self.reuse = False   # graceful: let this check finish, then reconnect
                    continue
                in_flight = self.in_flight
                self.close()
                if in_flight:
                    self.s.handle_failure(NETWORK, False, 0)
                return
        self._flush()

    def _header(self, name: bytes, headers=None) -> bytes | None:
        for k, v in (self.headers if headers is None else headers):
            if k == name:
                return v
        return None

    def _complete(self) -> None:
        self.in_flight = False
        s = self.s
        if self.grpc is not None:
            ok = self._grpc_ok()
            if not self.reuse:
                self.close()
            if ok:
                s.handle_success(False, self.status)
            else:
                s.handle_failure(ACTIVE, False, self.status)
            return
        check = s.config.http
        status = self.status
        result = None
        if check.receive and not payload_match(check.receive, self.data):
            result = "failed"
        elif not any(a <= status < b for a, b in check.expected_statuses):
            result = "retriable" if any(a <= status < b for a, b in check.retriable_statuses) else "failed"
        if result is not None and self._header(b"x-envoy-immediate-health-check-fail") is not None:
            s.health.excluded = True
        if not self.reuse:
            self.close()
        if result is None:
            s.handle_success(self._header(b"x-envoy-degraded") is not None, status)
        else:
            s.handle_failure(ACTIVE, result == "retriable", status)

    def _grpc_ok(self) -> bool:
        """grpc-status 0 and one HealthCheckResponse whose status is SERVING (1)."""
        if self.status != 200:
            return False
        if self.trailers:
            grpc_status = self._header(b"grpc-status", self.trailers)
        else:  # trailers-only: the status is in the headers, and there is no message
            return False
        ctype = self._header(b"content-type") or b""
        if grpc_status != b"0" or not ctype.startswith(b"application/grpc"):
            return False
        data = bytes(self.data)
        if len(data) < 5 or data[0] != 0:
            return False
        n = int.from_bytes(data[1:5], "big")
        if len(data) != 5 + n:
            return False   # none, or more than the one message of a unary answer
        return _serving_status(data[5:]) == 1

    def _fail(self, failure_type: str) -> None:
        in_flight = self.in_flight
        self.close()
        if in_flight:
            self.s.handle_failure(failure_type, False, 0)

    def _on_closed(self) -> None:
        self.conn = None
        self.h2 = None
        if self.in_flight:
            self.in_flight = False
            self.s.handle_failure(NETWORK, False, 0)

    def timeout(self) -> None:
        if self.grpc is not None and self.reuse and self.h2 is not None and self.in_flight:
            # gRPC: the stream is reset, the connection kept (Envoy's onTimeout).
            self.in_flight = False
            try:
                self.h2.reset_stream(self.stream_id, ErrorCodes.CANCEL)
            except H2Error:
                self.close()
                return
            self._flush()
            return
        self.close()

    def close(self) -> None:
        self.in_flight = False
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.h2 = None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _serving_status(msg: bytes) -> int:
    """grpc.health.v1.HealthCheckResponse.status (field 1, an enum): 0 when absent or the
    message is malformed (UNKNOWN)."""
    i, status = 0, 0
    try:
        while i < len(msg):
            tag, i = _read_varint(msg, i)
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                value, i = _read_varint(msg, i)
                if field == 1:
                    status = value
            elif wire == 2:
                n, i = _read_varint(msg, i)
                i += n
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            else:
                return 0
        return status if i == len(msg) else 0
    except IndexError:
        return 0


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        c = b[i]
        i += 1
        value |= (c & 0x7F) << shift
        if not c & 0x80:
            return value, i
        shift += 7


class _HcInfo:
    """What header formats see in a health check request (Envoy: a stream info with loopback
    addresses and no downstream request)."""

    downstream_remote_address = "127.0.0.1:0"
    downstream_local_address = "127.0.0.1:0"
    start_time = 0.0
    request_headers = Headers()
    downstream_ssl = None
    upstream_ssl = None
    requested_server_name = ""


_HC_INFO = _HcInfo()


class TcpProbe:
    """TcpActiveHealthCheckSession's I/O: connect (kept with reuse_connection and a receive
    payload), write `send`, pass when the bytes read contain `receive`; with no `receive` a
    completed connect passes and is closed."""

    def __init__(self, session: "Session") -> None:
        self.s = session
        self.conn: _Socket | None = None
        self.buf = bytearray()
        self.expect_close = False

    def start(self) -> None:
        s = self.s
        if self.conn is None:
            self.expect_close = False
            self.buf = bytearray()
            self.conn = _Socket(s.dispatcher, s.target, self._on_connected, self._on_data, self._on_closed)
        if s.config.tcp.send:
            self.conn.write(s.config.tcp.send)

    def _on_connected(self) -> None:
        if not self.s.config.tcp.receive:
            self.close()
            self.s.handle_success(False, 0)

    def _on_data(self, data: bytes) -> None:
        self.buf += data
        if payload_match(self.s.config.tcp.receive, self.buf):
            self.buf = bytearray()
            if not self.s.config.reuse_connection:
                self.close()
            self.s.handle_success(False, 0)

    def _on_closed(self) -> None:
        self.conn = None
        if not self.expect_close:
            self.s.handle_failure(NETWORK, False, 0)

    def timeout(self) -> None:
        self.close()

    def close(self) -> None:
        self.expect_close = True
        if self.conn is not None:
            self.conn.close()
        self.conn = None


# -- sessions --------------------------------------------------------------------------------

class Session:
    """One checker's state for one host (ActiveHealthCheckSession)."""

    def __init__(self, checker: "_Checker", host: Host, health: HostHealth) -> None:
        self.checker = checker
        self.config: HealthCheckConfig = checker.config
        self.dispatcher = checker.owner.dispatcher
        self.host = host
        self.health = health
        hc = host.hc
        self.target = ((hc.address if hc is not None and hc.address else host.address),
                       (hc.port if hc is not None and hc.port else host.port))
        self.hostname = ((hc.hostname if hc is not None and hc.hostname else "")
                         or (self.config.http.host if self.config.http is not None else "")
                         or (self.config.grpc.authority if self.config.grpc is not None else "")
                         or checker.owner.cluster)
        self.num_healthy = 0
        self.num_unhealthy = 0
        self.first_check = True
        self.checked = False    # at least one result (cluster warming)
        cfg = self.config
        if cfg.grpc is not None or (cfg.http is not None and cfg.http.http2):
            self.probe: HttpProbe | H2Probe | TcpProbe = H2Probe(self)
        elif cfg.http is not None:
            self.probe = HttpProbe(self)
        else:
            self.probe = TcpProbe(self)
        self.interval_timer = self.dispatcher.create_timer(self._on_interval)
        self.timeout_timer = self.dispatcher.create_timer(self._on_timeout)
        self.stopped = False
        self.awaiting = False

    def start(self) -> None:
        jitter = self.config.initial_jitter
        if jitter <= 0:
            self._on_interval()
        else:
            ms = int(jitter * 1000)
            self.interval_timer.enable(self.checker.owner.rand(ms) / 1000 if ms else 0)

    def stop(self) -> None:
        self.stopped = True
        self.interval_timer.disable()
        self.timeout_timer.disable()
        self.probe.close()

    def _on_interval(self) -> None:
        if self.stopped:
            return
        self.awaiting = True
        self.probe.start()
        if self.stopped:
            return
        if self.awaiting:  # (a result that came inline already re-armed the interval)
            self.timeout_timer.enable(self.config.timeout)
        self.checker.stats.attempt.inc()

    def _on_timeout(self) -> None:
        if self.stopped:
            return
        self.probe.timeout()
        self.handle_failure(NETWORK_TIMEOUT, False, 0)

    # -- Envoy's transitions -------------------------------------------------------------------
    def handle_success(self, degraded: bool, status: int) -> None:
        if self.stopped:
            return
        c, h, owner = self.checker, self.health, self.checker.owner
        self.num_unhealthy = 0
        changed = UNCHANGED
        if h.failed:
            self.num_healthy += 1
            if self.first_check or self.num_healthy == self.config.healthy_threshold:
                h.timeout = h.excluded = h.failed = False
                c.stats.healthy.inc()
                changed = CHANGED
                if c.events is not None:
                    c.events.add_healthy(self.config.kind, self.host, owner.cluster, self.first_check)
            else:
                changed = CHANGE_PENDING
        if degraded != h.degraded:
            h.degraded = degraded
            if degraded:
                c.stats.degraded.inc()
                if c.events is not None:
                    c.events.degraded(self.config.kind, self.host, owner.cluster)
            else:
                c.stats.degraded.dec()
                if c.events is not None:
                    c.events.no_longer_degraded(self.config.kind, self.host, owner.cluster)
            if changed == UNCHANGED:
                changed = CHANGED
        c.stats.success.inc()
        if c.events is not None and self.config.always_log_health_check_success:
            c.events.success(self.config.kind, self.host, owner.cluster)
        self.first_check = False
        if not h.failed and owner.on_check_passed is not None:
            owner.on_check_passed(self.host.key)   # outlier detection may take it back in
        self._done(changed, healthy=True)

    def handle_failure(self, failure_type: str, retriable: bool, status: int) -> None:
        if self.stopped:
            return
        self._done(self.set_unhealthy(failure_type, retriable, status), healthy=False)

    def set_unhealthy(self, failure_type: str, retriable: bool, status: int) -> int:
        """Envoy's setUnhealthy: count the failure, maybe eject; returns the transition (the
        caller re-arms the timers, or not: a passive failure leaves them)."""
        c, h, owner = self.checker, self.health, self.checker.owner
        self.num_healthy = 0
        changed = UNCHANGED
        if not h.failed:
            self.num_unhealthy += 1
            if ((not retriable and failure_type == ACTIVE)
                    or self.num_unhealthy == self.config.unhealthy_threshold):
                h.failed = True
                c.stats.healthy.dec()
                changed = CHANGED
                if c.events is not None:
                    c.events.eject(self.config.kind, self.host, owner.cluster, failure_type, status)
            else:
                changed = CHANGE_PENDING
        timeout = failure_type == NETWORK_TIMEOUT and h.failed
        if timeout != h.timeout:
            h.timeout = timeout
            if changed == UNCHANGED:
                changed = CHANGED  # a flag /clusters shows: republish
        if c.events is not None and (self.first_check or self.config.always_log_health_check_failures):
            c.events.unhealthy(self.config.kind, self.host, owner.cluster, failure_type,
                               self.first_check, status)
        c.stats.failure.inc()
        if failure_type in (NETWORK, NETWORK_TIMEOUT):
            c.stats.network_failure.inc()
        elif failure_type == PASSIVE:
            c.stats.passive_failure.inc()
        self.first_check = False
        return changed

    def _done(self, changed: int, healthy: bool) -> None:
        self.awaiting = False
        self.timeout_timer.disable()
        self.interval_timer.enable(self.checker.interval(healthy, changed))
        first = not self.checked
        self.checked = True
        self.checker.owner.host_checked(changed == CHANGED, first)


class _Checker:
    """One configured HealthCheck of a cluster: its sessions by host key."""

    def __init__(self, owner: "ClusterHealthChecker", config: HealthCheckConfig) -> None:
        self.owner = owner
        self.config = config
        self.stats = owner.stats
        self.events = EventLogger(config.event_log_path, owner.wall_clock) if config.event_log_path else None
        self.sessions: dict[tuple[str, int], Session] = {}

    def interval(self, healthy: bool, changed: int) -> float:
        """HealthCheckerImplBase::interval + intervalWithJitter (ms arithmetic as Envoy's)."""
        c = self.config
        if self.owner.had_traffic():
            if not healthy:
                base = c.unhealthy_edge_interval if changed == CHANGE_PENDING else c.unhealthy_interval
            else:
                base = c.healthy_edge_interval if changed == CHANGE_PENDING else c.interval
        else:
            base = (c.no_traffic_healthy_interval if healthy and changed != CHANGE_PENDING
                    else c.no_traffic_interval)
        ms = int(base * 1000)
        percent_mod = c.interval_jitter_percent * ms // 100
        if percent_mod > 0:
            ms += self.owner.rand(percent_mod)
        jitter_ms = int(c.interval_jitter * 1000)
        if jitter_ms > 0:
            ms += self.owner.rand(jitter_ms)
        return max(1, ms) / 1000


class ClusterHealthChecker:
    """The health checkers of one cluster. `set_hosts(hosts)` starts sessions for new hosts
    and stops those of hosts gone; `apply(hosts)` returns them with their current flags;
    `on_change()` is called (main thread) when some host's flags changed; `warm` is true once
    every host has had a first result (the cluster may then take traffic: Envoy's warming)."""

    def __init__(self, cluster: str, configs: Iterable[HealthCheckConfig], dispatcher, stats_store,
                 had_traffic: Callable[[], bool], on_change: Callable[[], None],
                 rng: random.Random | None = None,
                 wall_clock: Callable[[], float] | None = None) -> None:
        self.cluster = cluster
        self.dispatcher = dispatcher
        self.stats = _Stats(stats_store, cluster)
        self.had_traffic = had_traffic
        self.on_change = on_change
        self._rng = rng or random.Random()
        self.wall_clock = wall_clock or time.time
        self.health: dict[tuple[str, int], HostHealth] = {}
        self.checkers = [_Checker(self, c) for c in configs]
        self._pending_first: set[tuple[str, int]] = set()
        self._change_posted = False
        # Outlier detection's hook (cluster_outlier.py): a check of a host passed and the host
        # is not failed_active_hc (Envoy's addHostCheckCompleteCb). Main thread.
        self.on_check_passed: Callable[[tuple[str, int]], None] | None = None

    def rand(self, n: int) -> int:
        return self._rng.randrange(n) if n > 0 else 0

    @property
    def warm(self) -> bool:
        return not self._pending_first

    def set_hosts(self, hosts: tuple[Host, ...]) -> None:
        keep = {h.key for h in hosts if not (h.hc is not None and h.hc.disabled)}
        for checker in self.checkers:
            for key in [k for k in checker.sessions if k not in keep]:
                checker.sessions.pop(key).stop()
        for key in [k for k in self.health if k not in keep]:
            hh = self.health.pop(key)
            if not hh.failed:
                self.stats.healthy.dec()
            if hh.degraded:
                self.stats.degraded.dec()
            self._pending_first.discard(key)
        new = []
        for h in hosts:
            if h.key not in keep or h.key in self.health:
                continue
            hh = self.health[h.key] = HostHealth()
            self._pending_first.add(h.key)
            for checker in self.checkers:
                s = checker.sessions[h.key] = Session(checker, h, hh)
                new.append(s)
        for s in new:  # after the bookkeeping: a start may complete inline (never does today)
            s.start()

    def apply(self, hosts: tuple[Host, ...]) -> tuple[Host, ...]:
        out = []
        for h in hosts:
            hh = self.health.get(h.key)
            out.append(h if hh is None else hh.apply(h))
        return tuple(out)

    def report_immediate_fail(self, host: Host) -> None:
        """Any thread (a worker's router): a routed response from `host` carried
        x-envoy-immediate-health-check-fail. Main then sets /excluded_via_immediate_hc_fail and
        counts a passive failure (Envoy's HealthCheckHostMonitor::setUnhealthy)."""
        self.dispatcher.post(lambda: self._immediate_fail(host.key))

    def _immediate_fail(self, key: tuple[str, int]) -> None:
        hh = self.health.get(key)
        # Envoy: the host's monitor is the last checker's session (each one replaces it).
        session = self.checkers[-1].sessions.get(key) if self.checkers else None
        if hh is None or session is None or session.stopped:
            return
        hh.excluded = True
        changed = session.set_unhealthy(PASSIVE, False, 0)
        # As Envoy, the host set is rebuilt only on a transition (the flag shows then).
        self.host_checked(changed == CHANGED, False)

    def host_checked(self, changed: bool, first: bool) -> None:
        if first:
            # Any checker's first result for the host counts (Envoy's addHostCheckCompleteCb).
            self._pending_first = {k for k in self._pending_first
                                   if not any((s := c.sessions.get(k)) is not None and s.checked
                                              for c in self.checkers)}
        if changed and not self._change_posted:
            # Several results of one loop iteration: one rebuild.
            self._change_posted = True
            self.dispatcher.defer(self._publish)

    def _publish(self) -> None:
        self._change_posted = False
        self.on_change()

    def stop(self) -> None:
        for checker in self.checkers:
            for s in checker.sessions.values():
                s.stop()
            checker.sessions.clear()
