"""tcp_proxy with `tunneling_config`: a downstream TCP connection carried in an HTTP CONNECT.

Envoy's TCP tunneling (configs/encapsulate_in_http1_connect.yaml, ..._http2_connect.yaml):
instead of a TCP connection to the host, the session takes a stream from the host's HTTP pool
(the cluster's protocol: HTTP/1.1, or HTTP/2 with its http2_protocol_options; a connection of
its own for HTTP/1.1, a stream among others for HTTP/2) and sends `CONNECT <hostname>`. A 2xx
answer establishes the tunnel: the downstream's bytes go as the request's body (HTTP/2 DATA),
its FIN as the request's end (END_STREAM, or a FIN on the HTTP/1.1 connection), and the
response's body and end come back as bytes and a FIN. Any other answer, a reset or a failed
connect closes the downstream connection (Envoy's InvalidResponseHeaders: the stream is
reset). The downstream is not read until the tunnel is up.

The session is its pool's "router": it implements the pool's and the stream's callbacks
(http/codec/client_protocol.py's UpstreamStreamCallbacks), with what the tcp_proxy session
keeps for the rest (stats, access log, idle timeout: tcp_proxy.py).
Thread affinity: one worker.
"""

from __future__ import annotations

import time

from ..http.headers import Headers, RequestHead
from ..router.header_mutation import apply_mutations
from .tcp_proxy import TcpProxySession

__all__ = ["TunnelingSession"]


class TunnelingSession(TcpProxySession):
    """A TcpProxySession whose upstream is a CONNECT stream (`self.stream`), not a socket."""

    def _connect(self, buffer_limit: int) -> None:
        ctx = self.ctx
        self.stream = None          # the UpstreamStream once the pool gave one
        self.pool = None
        self.pool_handle = None
        self.established = False   # a 2xx answered the CONNECT
        self.holds_request = False
        name = ctx.choose_cluster()
        cluster = ctx.worker.clusters.get(name) if name else None
        if cluster is None:
            ctx.downstream_cx_no_route.value += 1
            self.info.set_response_flag("NR")
            self.downstream.close(flush=False)
            return
        self.cluster = cluster
        self.info.upstream_cluster = cluster.name
        host = cluster.choose_host()
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
            self.info.set_response_flag("UH")
            self.downstream.close(flush=False)
            return
        self.info.upstream_host = str(host)
        pool = cluster.pool_for(host)
        if hasattr(pool, "http1"):  # use_downstream_protocol_config: a TCP downstream is no
            pool = pool.http1       # HTTP/2 request, so HTTP/1.1
        self.pool = pool
        if not pool.limits.try_acquire_request():
            cluster.stats.upstream_rq_active_overflow.value += 1
            self.info.set_response_flag("UO")
            self.downstream.close(flush=False)
            return
        self.holds_request = True
        cluster.stats.upstream_rq_active.value += 1
        self.connect_started = time.monotonic()
        self.downstream.read_disable(True)  # nothing is read until the tunnel is up
        self.downstream.start()
        self.pool_handle = pool.new_stream(self)

    # -- pool callbacks (as the router's) ---------------------------------------------------
    def on_pool_ready(self, stream) -> None:
        self.pool_handle = None
        if self.downstream.closed:
            stream.release(True)
            self._release_request()
            return
        self.stream = stream
        self.cluster.stats.upstream_rq_total.value += 1
        self.info.upstream_local_address = stream.local_address
        hostname = self.ctx.config.tunneling_hostname.encode("latin-1")
        head = RequestHead(b"CONNECT", b"", hostname, b"http", Headers([]))
        mutations = self.ctx.config.tunneling_headers
        if mutations:  # headers_to_add, formatted from this connection's facts
            apply_mutations(mutations, head.headers, self.info)
        stream.send_headers(head, False, True)

    def on_pool_failure(self, reason: str, flag: str, transport_failure: str = "") -> None:
        self.pool_handle = None
        self._release_request()
        self.info.set_response_flag(flag)
        if transport_failure:
            self.info.upstream_transport_failure_reason = transport_failure
        self.downstream.close(flush=False)

    # -- the CONNECT's response (UpstreamStreamCallbacks) -------------------------------------
    def on_upstream_headers(self, ev, body: bytes | None = None) -> None:
        """The CONNECT's answer; with `body`, the whole exchange at once (an HTTP/2 upstream
        may answer, send and end in one read): the tunnel's bytes and its end."""
        if 200 <= ev.status < 300:
            self.established = self.connected = True
            self.cluster.stats.upstream_cx_connect_ms.record(
                (time.monotonic() - self.connect_started) * 1000.0)
            self.downstream.read_disable(False)
            self._touch()
            if body is not None:
                if body:
                    self.downstream.write(body)
                self.on_upstream_complete(None)
            return
        # Not a tunnel (Envoy's InvalidResponseHeaders): the stream is reset, the client closed.
        self.info.set_response_flag("UPE")
        self._drop_stream()
        self.downstream.close(flush=False)

    def on_upstream_data(self, data: bytes) -> None:
        self._touch()
        self.downstream.write(data)

    def on_upstream_complete(self, trailers) -> None:
        self.upstream_eof = True
        self.downstream.shutdown_write()
        self._maybe_done()

    def on_upstream_reset(self, reason: str, flag: str = "UC", status: int = 503,
                          reused: bool = False, transport_failure: str = "") -> None:
        self.stream = None
        self._release_request()
        if not self.established:
            self.info.set_response_flag(flag)
            if transport_failure:
                self.info.upstream_transport_failure_reason = transport_failure
            self.downstream.close(flush=False)
            return
        self.downstream.close(flush=True)  # the tunnel ends when either side closes

    def on_upstream_watermark(self, above: bool) -> None:
        if not self.downstream.closed:
            self.downstream.read_disable(above)

    # -- downstream callbacks ---------------------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        self._touch()
        if self.stream is not None:
            self.stream.send_data(data)

    def on_eof(self) -> None:
        self.downstream_eof = True
        if self.stream is not None:
            self.stream.shutdown_write()  # HTTP/2 END_STREAM, HTTP/1.1 a FIN
        self._maybe_done()

    def on_close(self, reason: str) -> None:
        if self.pool_handle is not None:
            self.pool_handle.cancel()
            self.pool_handle = None
            self._release_request()
        self._drop_stream(clean=self.downstream_eof and self.upstream_eof)
        self._finish()

    def on_above_write_watermark(self) -> None:
        if self.stream is not None:
            self.stream.read_disable(True)

    def on_below_write_watermark(self) -> None:
        if self.stream is not None:
            self.stream.read_disable(False)

    # -- helpers --------------------------------------------------------------------------------
    def _drop_stream(self, clean: bool = False) -> None:
        stream = self.stream
        self.stream = None
        if stream is not None:
            stream.release(clean)
        self._release_request()

    def _release_request(self) -> None:
        if self.holds_request:
            self.holds_request = False
            self.pool.limits.release_request()
            self.cluster.stats.upstream_rq_active.value -= 1

    def _on_idle(self) -> None:
        self.ctx.idle_timeout.value += 1
        self.downstream.close(flush=True)
