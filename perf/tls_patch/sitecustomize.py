"""Experiment, not a fix: the TLS hot-path changes RESULTS.md ("TLS termination", suggestions
1-4) measured, applied at start-up to an unchanged proxy/ (this directory on PYTHONPATH makes
Python import this file as `sitecustomize`; it patches proxy.tls.transport_socket when that is
first imported). Benchmark aid only, never imported by the proxy; the real change belongs in
proxy/tls/transport_socket.py and proxy/network/connection.py.

TLSPATCH=interest,read,cffi,write (default: all), any subset:
  interest  Connection.set_transport_interest does nothing when the mask is unchanged
  read      do_read stops when SSL_pending and the incoming BIO are empty (no WantReadError)
  cffi      SSL_read into a reused buffer, BIO_write straight from _fill
  write     a small response: one SSL_write, BIO_read into a reused buffer, sock.send of it

    TLSPATCH=interest PYTHONPATH=perf/tls_patch CONFIG=DIR/ftproxy-18090.yaml \
      URL=https://127.0.0.1:18090/ SECS=20 perf/instr_count.sh
"""
import os

_which = set(filter(None, os.environ.get("TLSPATCH", "interest,read,cffi,write").split(",")))

def _apply():
    from proxy.network import connection as C
    from proxy.tls import transport_socket as T
    from OpenSSL import SSL
    from OpenSSL._util import ffi, lib
    if "interest" in _which:
        def set_transport_interest(self, mask):
            if mask == self._transport_interest:
                return
            self._transport_interest = mask
            self._update_interest()
        C.Connection.set_transport_interest = set_transport_interest
    if "read" in _which or "cffi" in _which:
        buf = ffi.new("char[]", T._RECORD)
        SSL_read, SSL_get_error, SSL_pending = lib.SSL_read, lib.SSL_get_error, lib.SSL_pending
        BIO_pending = lib.BIO_get_mem_data
        WANT_READ, ZERO = lib.SSL_ERROR_WANT_READ, lib.SSL_ERROR_ZERO_RETURN
        use_cffi = "cffi" in _which
        def do_read(self, max_bytes):
            if not self.established or max_bytes == 0:
                return orig_do_read(self, max_bytes)
            self._fill()
            tls = self.tls
            ssl = tls._ssl
            chunks = []
            got = 0
            while got < max_bytes:
                if use_cffi:
                    n = SSL_read(ssl, buf, min(max_bytes - got, T._RECORD))
                    if n > 0:
                        chunks.append(ffi.buffer(buf, n)[:])
                        got += n
                    else:
                        err = SSL_get_error(ssl, n)
                        if err == ZERO:
                            self._eof = True
                        elif err != WANT_READ:
                            try:
                                tls._raise_ssl_error(ssl, n)
                            except SSL.Error as e:
                                self._fail(T._describe(e, self._verify_failure))
                        break
                else:
                    try:
                        data = tls.recv(min(max_bytes - got, T._RECORD))
                    except SSL.WantReadError:
                        break
                    except SSL.ZeroReturnError:
                        self._eof = True
                        break
                    except SSL.Error as e:
                        self._fail(T._describe(e, self._verify_failure))
                    chunks.append(data)
                    got += len(data)
                if "read" in _which and not SSL_pending(ssl) and not BIO_pending(tls._into_ssl, ffi.NULL):
                    break  # nothing left to decrypt: no second SSL_read that only says WANT_READ
            if self._out or T._pending_out(tls):
                self._flush()
            if got >= max_bytes or (got and self._eof):
                self.callbacks.set_transport_readable()
            if got:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if self._eof:
                return b""
            raise BlockingIOError
        orig_do_read = T.TlsSocket.do_read
        T.TlsSocket.do_read = do_read
    if "cffi" in _which:
        BIO_write = lib.BIO_write
        def _fill(self):
            try:
                data = self.sock.recv(T._RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            if data:
                BIO_write(self.tls._into_ssl, data, len(data))
            else:
                self._eof = True
        T.TlsSocket._fill = _fill

    if "write" in _which:
        wbuf = ffi.new("char[]", 256 * 1024)
        SSL_write, BIO_read, BIO_pend = lib.SSL_write, lib.BIO_read, lib.BIO_get_mem_data
        orig_do_write = T.TlsSocket.do_write
        WRITE = T.WRITE
        def do_write(self, buffers, size):
            if self._out or not self.established or not size or size > T._JOIN_MAX:
                return orig_do_write(self, buffers, size)
            tls = self.tls
            data = buffers[0] if len(buffers) == 1 else b"".join(buffers)
            n = SSL_write(tls._ssl, data, len(data))
            if n <= 0:
                try:
                    tls._raise_ssl_error(tls._ssl, n)
                except SSL.Error as e:
                    self._fail(T._describe(e, None))
            pending = BIO_pend(tls._from_ssl, ffi.NULL)
            if pending > len(wbuf):
                self._flush()
                return n
            m = BIO_read(tls._from_ssl, wbuf, pending)
            out = ffi.buffer(wbuf, m)[:]
            try:
                sent = self.sock.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as e:
                self._fail(f"write: {e.strerror or e}")
            if sent < m:
                self._out += out[sent:]
                self.callbacks.set_transport_interest(WRITE)
            return n
        T.TlsSocket.do_write = do_write

import importlib.abc, importlib.machinery, sys
class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "proxy.tls.transport_socket":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        real = spec.loader.exec_module
        def exec_module(module):
            real(module)
            _apply()
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, _Hook())
