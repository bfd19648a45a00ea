"""The TLS transport socket (`envoy.transport_sockets.tls`): pyOpenSSL in memory-BIO mode.

OpenSSL never touches the socket: ciphertext read from the socket goes into the connection's
incoming BIO, and what OpenSSL writes into its outgoing BIO is sent by us, so the worker's
own epoll loop stays in charge (proxy/network/transport_socket.py has the seam's contract).

- Handshake: a client's starts in `on_connected` (its ClientHello goes out then); a server
  waits for the ClientHello. While it runs the socket asks for READ interest (and WRITE
  while ciphertext waits); when it is done
  it calls `raise_connected()`, so the Connection's owner hears `on_connected` only once
  application bytes can flow, and a client's connect timeout covers the handshake. A failed
  handshake (alert, bad certificate, garbage) raises OSError with `failure_reason` set
  (Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%` / `%DOWNSTREAM_TRANSPORT_FAILURE_REASON%`).
- Reading: one `recv` per readable event into the BIO, then up to `max_bytes` plaintext,
  record by record, into the worker's read buffer; plaintext left over is announced with
  `set_transport_readable()`.
- Writing: plaintext is taken only while no ciphertext waits for the socket, at most
  `_WRITE_CHUNK` per call, so the memory held here is bounded by one chunk's ciphertext
  whatever the owner queues (a reader that never reads costs one chunk, not the response).
  The ciphertext goes out from the worker's write buffer; only what the socket does not
  take is copied and held.
- The per-request calls go to OpenSSL through pyOpenSSL's cffi binding (`SSL_read`,
  `SSL_write`, `BIO_*`), not its Python wrappers: those allocate per call and raise an
  exception for every "nothing more" (perf/RESULTS.md, TLS). Handshakes, verification and
  everything else use pyOpenSSL's API.
- Half-close: close_notify, then FIN once it is out.

Stats (Envoy's `ssl.*` of the listener or the cluster, per worker): `SslStats`.
Thread affinity: a socket belongs to its Connection's worker; factories are immutable and
shared (their contexts are read-only after construction); `WorkerTlsFactory` is per worker.
"""

from __future__ import annotations

import dataclasses
import itertools
import socket
from collections import deque
from collections.abc import Hashable
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from ..config.registry import Extension, register
from ..network.transport_socket import DOWNSTREAM, READ, UPSTREAM, WRITE, RawBufferSocket
from .config import (DOWNSTREAM_PROTO, TLS_NAME, UPSTREAM_PROTO, DownstreamTls, UpstreamTls,
                     parse_downstream_tls, parse_upstream_tls)
from .context import ServerContexts, client_context, server_contexts
from .info import TlsInfo

__all__ = ["TlsSocket", "DownstreamTlsFactory", "UpstreamTlsFactory", "SslStats", "WorkerTlsFactory",
           "NotReadySocket"]

_RECV_SIZE = 256 * 1024     # ciphertext per socket read
_WRITE_CHUNK = 256 * 1024   # plaintext encrypted per do_write, at most (a bulk read's worth)
_RECORD = 16 * 1024         # TLS plaintext per record: what one SSL_read returns at most
_JOIN_MAX = 16 * 1024       # small queued buffers are joined into one SSL_write (one record)


class SslStats:
    """Envoy's `<scope>.ssl.*` counters of one listener or cluster, on one worker."""

    __slots__ = ("scope", "handshake", "connection_error", "session_reused", "no_certificate",
                 "fail_verify_no_cert", "fail_verify_error", "fail_verify_san", "fail_verify_cert_hash",
                 "_dynamic")

    def __init__(self, scope) -> None:  # scope: proxy.stats.store.Scope at "<...>.ssl"
        self.scope = scope
        for name in ("handshake", "connection_error", "session_reused", "no_certificate",
                     "fail_verify_no_cert", "fail_verify_error", "fail_verify_san", "fail_verify_cert_hash"):
            setattr(self, name, scope.counter(name))
        self._dynamic: dict[str, Any] = {}

    def count(self, group: str, value: str) -> None:
        """`ssl.ciphers.<name>`, `ssl.versions.<name>`, `ssl.curves.<name>`."""
        key = f"{group}.{value}"
        c = self._dynamic.get(key)
        if c is None:
            c = self._dynamic[key] = self.scope.counter(key)
        c.value += 1


class TlsSocket:
    """One TLS connection's I/O over its socket. See the module docstring."""

    __slots__ = ("sock", "fd", "tls", "callbacks", "server", "stats", "established", "failure_reason",
                 "connect_timeout", "san_from_sni", "_out", "_eof", "_shut_pending", "_verify_failure",
                 "_info", "_factory", "_closed", "_ticket_pending", "_buffers")
    raw_socket = None  # ciphertext on the wire: nothing may splice it

    def __init__(self, sock: socket.socket, tls: SSL.Connection, server: bool,
                 stats: SslStats | None, factory: WorkerTlsFactory | None = None,
                 connect_timeout: float = 0.0) -> None:
        self.sock = sock
        self.connect_timeout = connect_timeout
        self.san_from_sni: str | None = None  # upstream auto_sni_san_validation: the SNI sent
        self.fd = sock.fileno()
        self.tls = tls
        tls.set_app_data(self)  # the verify callback records its failure here
        self.server = server
        self.stats = stats
        self.callbacks = None
        self.established = False
        self.failure_reason = ""
        self._out = bytearray()          # ciphertext the socket has not taken yet
        self._eof = False                # the peer's end of stream (FIN or close_notify)
        self._shut_pending = False       # FIN once the held ciphertext (close_notify) is out
        self._verify_failure: tuple[str, str] | None = None
        self._info: TlsInfo | None = None
        self._factory = factory
        self._buffers = factory.buffers if factory is not None else IoBuffers()
        self._closed = False
        self._ticket_pending = False  # a TLS 1.3 client: its resumable session comes after the handshake

    # -- TransportSocket -------------------------------------------------------------------
    def set_callbacks(self, callbacks) -> None:
        self.callbacks = callbacks

    def connect(self, address: tuple[str, int]) -> int:
        return self.sock.connect_ex(address)

    def connect_error(self) -> int:
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def on_connected(self) -> None:
        if self.server:
            self.callbacks.set_transport_interest(READ)  # wait for the ClientHello
        else:
            self._handshake()  # the ClientHello goes out now

    def do_read(self, max_bytes: int) -> bytes:
        if not self.established:
            self._fill()
            self._handshake()
            if not self.established:
                if self._eof:
                    self._fail("connection closed during the TLS handshake")
                raise BlockingIOError
            if max_bytes == 0:
                self.callbacks.set_transport_readable()  # records may have come with it
                raise BlockingIOError
        elif max_bytes == 0:
            raise BlockingIOError  # reading is disabled: leave the bytes in the socket
        else:
            self._fill()
        # SSL_read straight into this worker's buffer (pyOpenSSL's recv allocates one per call
        # and raises an exception for "nothing more"): one record per call, until the record
        # layer and the incoming BIO are both empty.
        tls = self.tls
        ssl = tls._ssl
        buf = self._buffers.read
        chunks = []
        got = 0
        while got < max_bytes:
            n = _SSL_read(ssl, buf, min(max_bytes - got, _RECORD))
            if n <= 0:
                err = _SSL_get_error(ssl, n)
                if err == _ZERO_RETURN:   # close_notify: the peer's end of stream
                    self._eof = True
                elif err != _WANT_READ:
                    self._ssl_failed(n, self._verify_failure)
                break
            chunks.append(_ffi.buffer(buf, n)[:])
            got += n
            if not _SSL_pending(ssl) and not _BIO_pending(tls._into_ssl, _NULL):
                break  # all read: no SSL_read that would only say WANT_READ
        if self._out or _BIO_pending(tls._from_ssl, _NULL):
            self._flush()  # TLS 1.3 tickets, key updates or alerts produced while reading
        if self._ticket_pending and got:
            self._ticket_pending = False  # the server's NewSessionTicket came before its data
            self._factory.session_established(tls)
        if got >= max_bytes or (got and self._eof):
            self.callbacks.set_transport_readable()  # more (or the EOF) without a new event
        if got:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self._eof:
            return b""
        raise BlockingIOError

    def do_write(self, buffers: deque, size: int) -> int:
        if self._out:
            if not self._flush():
                return 0
        if not self.established or not size:
            return 0
        ssl = self.tls._ssl
        if size <= _JOIN_MAX:
            # The common case, a response that fits one record: one SSL_write, and its
            # ciphertext sent from this worker's buffer without a copy held here.
            data = buffers[0] if len(buffers) == 1 else b"".join(buffers)
            n = _SSL_write(ssl, data if type(data) is bytes else _ffi.from_buffer(data), size)
            if n <= 0:
                self._ssl_failed(n, None)
            if n != size:
                self._send_ciphertext()
                return n  # a partial write: the rest is offered again
            self._send_ciphertext()
            return size
        taken = 0
        for chunk in buffers:
            # Partial writes are on (pyOpenSSL's default): SSL_write may stop after a record.
            view = memoryview(chunk)
            done = 0
            while done < len(view) and taken < _WRITE_CHUNK:
                n = _SSL_write(ssl, _ffi.from_buffer(view[done:done + _WRITE_CHUNK - taken]),
                               min(len(view) - done, _WRITE_CHUNK - taken))
                if n <= 0:
                    self._ssl_failed(n, None)
                done += n
                taken += n
            if taken >= _WRITE_CHUNK:
                break
        self._send_ciphertext()
        return taken

    def _send_ciphertext(self) -> None:
        """After a write: send what OpenSSL produced; keep what the socket did not take."""
        tls = self.tls
        pending = _BIO_pending(tls._from_ssl, _NULL)
        wbuf = self._buffers.write
        if self._out or pending > len(wbuf):
            self._flush()
            return
        m = _BIO_read(tls._from_ssl, wbuf, pending)
        view = _ffi.buffer(wbuf, m)
        try:
            sent = self.sock.send(view)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            self._fail(f"write: {e.strerror or e}")
        if sent < m:
            self._out += view[sent:]
            self.callbacks.set_transport_interest(WRITE)

    def _ssl_failed(self, result: int, verify_failure) -> None:
        """An SSL_read/SSL_write error: raise it as OSError with the failure reason."""
        try:
            self.tls._raise_ssl_error(self.tls._ssl, result)
        except SSL.Error as e:
            self._fail(_describe(e, verify_failure))
        self._fail("TLS error")

    def shutdown_write(self) -> None:
        if not self.established:
            self._shut_pending = True
            self._flush()
            return
        try:
            self.tls.shutdown()  # close_notify
        except SSL.Error:
            pass
        self._shut_pending = True
        self._flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.established and not self._shut_pending and not self._eof:
            # A close_notify if the socket takes it at once (Envoy sends one on close too).
            try:
                self.tls.shutdown()
                pending = _pending_out(self.tls)
                if pending:
                    self._out += self.tls.bio_read(pending)
                if self._out:
                    self.sock.send(self._out)
            except (SSL.Error, OSError):
                pass
        try:
            self.sock.close()
        except OSError:
            pass

    def local_address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def protocol(self) -> str | None:
        if not self.established:
            return None
        p = self.tls.get_alpn_proto_negotiated()
        return p.decode() if p else None

    def ssl(self) -> TlsInfo | None:
        """What the handshake established (version, cipher, SNI, the peer's certificate)."""
        if not self.established:
            return None
        info = self._info
        if info is None:
            info = self._info = TlsInfo.from_connection(self.tls, self.server)
        return info

    # -- called by the verify callback (context.py) ----------------------------------------
    def verify_failed(self, stat: str, reason: str) -> None:
        self._verify_failure = (stat, reason)

    # -- internals -------------------------------------------------------------------------
    def _fill(self) -> None:
        """One socket read into the incoming BIO (epoll is level-triggered: the rest, if
        any, signals again)."""
        try:
            data = self.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            _BIO_write(self.tls._into_ssl, data, len(data))
        else:
            self._eof = True

    def _flush(self) -> bool:
        """Send held and new ciphertext; True when none is left. Asks for WRITE while some
        is held, and for READ until the handshake is done."""
        out = self._out
        pending = _pending_out(self.tls)
        if pending:
            out += self.tls.bio_read(pending)
        if out:
            try:
                n = self.sock.send(out)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self._fail(f"write: {e.strerror or e}")
            if n:
                del out[:n]
        if self._shut_pending and not out:
            self._shut_pending = False
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.callbacks.set_transport_interest((WRITE if out else 0) | (0 if self.established else READ))
        return not out

    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        except SSL.Error as e:
            self._flush()  # the alert, if any
            self._handshake_failed(e)
        self.established = True
        self._flush()
        self._handshake_done()
        self.callbacks.raise_connected()
        # Application records may have come with the handshake's last flight.
        self.callbacks.set_transport_readable()

    def _handshake_done(self) -> None:
        stats = self.stats
        tls = self.tls
        if stats is not None:
            stats.handshake.value += 1
            if _lib.SSL_session_reused(tls._ssl):
                stats.session_reused.value += 1
            stats.count("ciphers", tls.get_cipher_name() or "unknown")
            stats.count("versions", tls.get_protocol_version_name())
            group = tls.get_group_name()
            if group:
                stats.count("curves", _CURVE_NAMES.get(group, group))
            if tls.get_peer_certificate(as_cryptography=True) is None:
                stats.no_certificate.value += 1
        if self._factory is not None and not self.server and self._factory.shared.max_session_keys:
            if tls.get_protocol_version_name() == "TLSv1.3":
                self._ticket_pending = True
            else:
                self._factory.session_established(tls)

    def _handshake_failed(self, e: SSL.Error) -> None:
        stats = self.stats
        failure = self._verify_failure
        text = _describe(e, failure)
        if stats is not None:
            # As Envoy: a failed certificate check counts its fail_verify_* stat only;
            # connection_error is every other handshake failure (garbage, a protocol alert).
            if failure is not None:
                getattr(stats, failure[0]).value += 1
            elif "peer did not return a certificate" in text:
                stats.fail_verify_no_cert.value += 1
            else:
                stats.connection_error.value += 1
        self._fail(text)

    def _fail(self, reason: str):
        self.failure_reason = reason
        raise ConnectionResetError(reason)


# OpenSSL through pyOpenSSL's own cffi binding, on the per-request path: its Python wrappers
# allocate a buffer per read and raise an exception for every "nothing more" (measured: about
# 50k of the ~95k instructions TLS added per keep-alive request, perf/RESULTS.md). The
# objects pyOpenSSL keeps (`Connection._ssl`, `_into_ssl`, `_from_ssl`) are internal, hence
# the pin to pyOpenSSL 26.
_SSL_read, _SSL_write, _SSL_get_error, _SSL_pending = _lib.SSL_read, _lib.SSL_write, _lib.SSL_get_error, _lib.SSL_pending
_BIO_read, _BIO_write = _lib.BIO_read, _lib.BIO_write
_BIO_pending = _lib.BIO_get_mem_data   # (bio, NULL): bytes a memory BIO holds, no exception
_NULL = _ffi.NULL
_WANT_READ, _ZERO_RETURN = _lib.SSL_ERROR_WANT_READ, _lib.SSL_ERROR_ZERO_RETURN


def _pending_out(tls: SSL.Connection) -> int:
    """Ciphertext bytes OpenSSL wrote into the outgoing memory BIO and nobody read yet."""
    return _BIO_pending(tls._from_ssl, _NULL)


# OpenSSL's group names -> Envoy's (BoringSSL's) curve names, for `ssl.curves.<name>`.
_CURVE_NAMES = {"x25519": "X25519", "prime256v1": "P-256", "secp256r1": "P-256",
                "secp384r1": "P-384", "secp521r1": "P-521", "X25519MLKEM768": "X25519MLKEM768"}


def _describe(e: SSL.Error, verify_failure: tuple[str, str] | None) -> str:
    """A TLS error as Envoy writes transport failure reasons: `TLS_error:|<lib>:<reason>:
    <detail>:TLS_error_end` (the library's codes differ: OpenSSL, not BoringSSL)."""
    parts = []
    for item in (e.args[0] if e.args and isinstance(e.args[0], list) else []):
        if isinstance(item, tuple) and len(item) == 3:
            parts.append(f"{item[0]}:{item[2]}")
    if not parts:
        parts.append(str(e) or type(e).__name__)
    detail = f":{verify_failure[1]}" if verify_failure else ""
    return "TLS_error:|" + "|".join(parts) + detail + ":TLS_error_end"


# -- factories -------------------------------------------------------------------------------

_FACTORY_IDS = itertools.count(1)  # factory keys: a new factory (new contexts) never equals an old one

class IoBuffers:
    """The C buffers a worker's TLS sockets read plaintext into and ciphertext out of: one
    pair per worker (its sockets run one at a time on its thread), none per connection."""

    __slots__ = ("read", "write")

    def __init__(self) -> None:
        self.read = _ffi.new("char[]", _RECORD)
        # The ciphertext of one do_write: _WRITE_CHUNK plaintext plus each record's overhead.
        self.write = _ffi.new("char[]", _WRITE_CHUNK + _WRITE_CHUNK // _RECORD * 64 + 4096)


class NotReadySocket(RawBufferSocket):
    """Envoy's NotReadySslSocket: the factory's xDS secrets have not arrived yet, so there is
    no TLS context; the connection fails as soon as it is connected (accepted, or its connect
    completes) with Envoy's failure reason, and nothing is read or written."""

    __slots__ = ()
    failure_reason = "TLS error: Secret is not supplied by SDS"

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.do_read = self._fail_read

    def on_connected(self) -> None:
        raise ConnectionResetError(self.failure_reason)

    def _fail_read(self, max_bytes: int) -> bytes:
        raise ConnectionResetError(self.failure_reason)

    def do_write(self, buffers: deque, size: int) -> int:
        raise ConnectionResetError(self.failure_reason)


class WorkerTlsFactory:
    """A TLS factory bound to one worker's stats, I/O buffers and (upstream) session cache."""

    __slots__ = ("shared", "stats", "_sessions", "buffers")
    name = "envoy.transport_sockets.tls"
    implements_secure_transport = True

    def __init__(self, shared, stats: SslStats | None) -> None:
        self.shared = shared
        self.stats = stats
        self._sessions: deque = deque(maxlen=max(1, shared.max_session_keys))
        self.buffers = IoBuffers()

    @property
    def key(self) -> Hashable:
        return self.shared.key

    def for_worker(self, scope) -> WorkerTlsFactory:
        return self.shared.for_worker(scope)

    def create(self, sock: socket.socket, server_name: str | None = None,
               alpn_fallback: tuple[str, ...] = ()) -> TlsSocket:
        return self.shared.new_socket(sock, server_name, self, alpn_fallback)

    def session_established(self, tls: SSL.Connection) -> None:
        if self.shared.max_session_keys:
            session = tls.get_session()
            if session is not None:
                self._sessions.append((tls.get_context(), session))

    def session(self, context=None):
        """The newest session kept, if it was made with `context` (a rotated secret makes a
        new context: OpenSSL refuses sessions of the old one)."""
        if not self._sessions:
            return None
        made_with, session = self._sessions[-1]
        if context is not None and made_with is not context:
            self._sessions.clear()
            return None
        return session


class DownstreamTlsFactory:
    """`envoy.transport_sockets.tls` with a DownstreamTlsContext: server connections."""

    name = "envoy.transport_sockets.tls"
    implements_secure_transport = True
    max_session_keys = 0  # servers resume through tickets and their session cache instead

    def __init__(self, config: DownstreamTls, connect_timeout: float = 0.0) -> None:
        self.connect_timeout = connect_timeout  # the filter chain's transport_socket_connect_timeout
        self.alpn = tuple(p.encode() for p in config.common_tls_context.alpn_protocols)
        self.contexts: ServerContexts | None = None
        self._install(config)
        self.key = ("tls-server", next(_FACTORY_IDS))

    @property
    def ready(self) -> bool:
        """Every secret it names has a value (xDS secrets arrive after it is made)."""
        return self.contexts is not None

    def _install(self, config: DownstreamTls) -> None:
        """Build the contexts of `config` and publish them: one reference store, so a worker
        making a socket sees the old set or the new one, never a mix (a secret rotation).
        While an xDS secret is missing there are no contexts (sockets fail: not ready)."""
        if config.common_tls_context.pending:
            self.config = config
            return
        contexts = server_contexts(config, self._select_alpn)
        others = [c for c in (*contexts.exact.values(), *contexts.wildcard.values()) if c is not contexts.default]
        if others or contexts.mismatch is not None:
            contexts.default.set_tlsext_servername_callback(self._select_certificate)
        self.contexts: ServerContexts = contexts
        self.config = config

    @property
    def secret_sources(self):
        return self.config.common_tls_context.sources

    def update_secret(self, source, value) -> None:
        """Main thread: a watched secret changed; new connections use it. Raises ValueError
        (OpenSSL refused it) and keeps the current contexts."""
        common = self.config.common_tls_context.with_secret(source, value)
        self._install(dataclasses.replace(self.config, common_tls_context=common))

    def _select_alpn(self, conn: SSL.Connection, offered: list[bytes]) -> bytes:
        # Server preference (Envoy: SSL_select_next_proto over our list); no overlap: the
        # handshake goes on without ALPN, as in Envoy.
        for p in self.alpn:
            if p in offered:
                return p
        return SSL.NO_OVERLAPPING_PROTOCOLS

    def _select_certificate(self, conn: SSL.Connection) -> None:
        contexts = self.contexts
        name = conn.get_servername()
        ctx = contexts.for_server_name(name.decode("ascii", "replace")) if name else None
        if ctx is None:
            ctx = contexts.mismatch  # None: the first certificate's (the default) context
        if ctx is not None and ctx is not contexts.default:
            conn.set_context(ctx)

    def for_worker(self, scope) -> WorkerTlsFactory:
        return WorkerTlsFactory(self, SslStats(scope) if scope is not None else None)

    def create(self, sock: socket.socket, server_name: str | None = None,
               alpn_fallback: tuple[str, ...] = ()) -> TlsSocket:
        return self.new_socket(sock, server_name, None)

    def new_socket(self, sock, server_name, worker: WorkerTlsFactory | None,
                   alpn_fallback: tuple[str, ...] = ()) -> TlsSocket | NotReadySocket:
        contexts = self.contexts
        if contexts is None:
            return NotReadySocket(sock)
        tls = SSL.Connection(contexts.default, None)
        tls.set_accept_state()
        return TlsSocket(sock, tls, True, worker.stats if worker else None, worker, self.connect_timeout)

    def __repr__(self) -> str:
        return f"DownstreamTlsFactory({len(self.config.common_tls_context.tls_certificates)} certificate(s))"


class UpstreamTlsFactory:
    """`envoy.transport_sockets.tls` with an UpstreamTlsContext: client connections."""

    name = "envoy.transport_sockets.tls"
    implements_secure_transport = True

    def __init__(self, config: UpstreamTls) -> None:
        # (config, context), replaced by one reference store (a rotation): a worker making a
        # socket reads both from the same version. The context is None while an xDS secret is
        # missing: sockets fail (not ready) until it arrives.
        self._state = (config, None if config.common_tls_context.pending else client_context(config))
        self.max_session_keys = config.max_session_keys
        self.key = ("tls-client", next(_FACTORY_IDS))

    @property
    def secret_sources(self):
        return self.config.common_tls_context.sources

    def update_secret(self, source, value) -> None:
        """Main thread: a watched secret changed; new connections use it (the context is
        replaced by one reference store; sessions of the old one are not resumed)."""
        common = self.config.common_tls_context.with_secret(source, value)
        config = dataclasses.replace(self.config, common_tls_context=common)
        self._state = (config, None if common.pending else client_context(config))

    @property
    def config(self) -> UpstreamTls:
        return self._state[0]

    @property
    def context(self):
        return self._state[1]

    @property
    def ready(self) -> bool:
        return self._state[1] is not None

    def for_worker(self, scope) -> WorkerTlsFactory:
        return WorkerTlsFactory(self, SslStats(scope) if scope is not None else None)

    def create(self, sock: socket.socket, server_name: str | None = None,
               alpn_fallback: tuple[str, ...] = ()) -> TlsSocket:
        return self.new_socket(sock, server_name, None, alpn_fallback)

    def new_socket(self, sock, server_name, worker: WorkerTlsFactory | None,
                   alpn_fallback: tuple[str, ...] = ()) -> TlsSocket:
        """`alpn_fallback`: offered when the context configures no alpn_protocols (Envoy's
        ALPN fallback: the pool's protocols; a configured list wins, auto_config included)."""
        config, context = self._state
        if context is None:
            return NotReadySocket(sock)
        tls = SSL.Connection(context, None)
        tls.set_connect_state()
        if alpn_fallback and not config.common_tls_context.alpn_protocols:
            tls.set_alpn_protos([p.encode() for p in alpn_fallback])
        sni = server_name if config.auto_host_sni and server_name else config.sni
        if sni:
            tls.set_tlsext_host_name(sni.encode("idna") if not sni.isascii() else sni.encode())
        if worker is not None and self.max_session_keys:
            session = worker.session(context)
            if session is not None:
                tls.set_session(session)
        ts = TlsSocket(sock, tls, False, worker.stats if worker else None, worker)
        if config.auto_sni_san_validation and sni:
            ts.san_from_sni = sni
        return ts

    def __repr__(self) -> str:
        return f"UpstreamTlsFactory(sni={self.config.sni!r})"


register(Extension(category=DOWNSTREAM, name=TLS_NAME, proto=DOWNSTREAM_PROTO, parse=parse_downstream_tls,
                   factory=lambda config, _name, connect_timeout=0.0: DownstreamTlsFactory(config, connect_timeout)))
register(Extension(category=UPSTREAM, name=TLS_NAME, proto=UPSTREAM_PROTO, parse=parse_upstream_tls,
                   factory=lambda config, _name, **_options: UpstreamTlsFactory(config)))
