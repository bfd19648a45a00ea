"""A TLS ClientHello read from the first bytes of a connection: is it TLS, and which server
name (SNI) and application protocols (ALPN) does it ask for. Pure parsing, no I/O.

Envoy's tls_inspector hands the peeked bytes to BoringSSL and stops the handshake in its
certificate-selection and server-name callbacks; this module reaches the same verdicts by
hand, from the same bytes:
- `NEED_MORE`: the bytes so far begin a ClientHello (or are fewer than a record header):
  wait for more. The caller decides when it has waited for too many bytes.
- `NOT_TLS`: not a TLS handshake, or a ClientHello BoringSSL would refuse before calling the
  server-name callback: a record that is not a handshake record or not version 3.x, a record
  or handshake message over 16384 bytes, a first message that is not a ClientHello, a
  malformed ClientHello (session id over 32 bytes, an odd or empty cipher-suite list, no
  compression methods, extensions not filling the message, a duplicated extension), a
  malformed server_name extension (not exactly one non-empty host_name without NUL bytes),
  or no TLS version from 1.0 to 1.3 offered.
- `TLS`: a ClientHello; `server_name` ("" without SNI) and `alpn` (empty without ALPN, or
  when the ALPN extension is malformed: BoringSSL's later ALPN processing reports that,
  the inspector ignores it).
A ClientHello may span several records (post-quantum key shares make them 1.5 KB and more;
a client may also split it on purpose), and a record may end in the middle of anything.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["NEED_MORE", "NOT_TLS", "TLS", "ClientHello", "parse_client_hello", "MAX_MESSAGE"]

NEED_MORE = "need_more"
NOT_TLS = "not_tls"
TLS = "tls"

_HANDSHAKE = 0x16
_CLIENT_HELLO = 1
MAX_RECORD = 16384          # SSL3_RT_MAX_PLAIN_LENGTH
MAX_MESSAGE = 16384         # BoringSSL's ssl_max_handshake_message_len for a ClientHello
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43
_TLS10, _TLS13 = 0x0301, 0x0304


class ClientHello(NamedTuple):
    state: str                       # NEED_MORE, NOT_TLS or TLS
    server_name: str = ""
    alpn: tuple[str, ...] = ()


_NEED = ClientHello(NEED_MORE)
_NOT = ClientHello(NOT_TLS)


def parse_client_hello(data: bytes) -> ClientHello:
    """The verdict on `data`, the first bytes of a connection (all of them so far)."""
    message = bytearray()
    pos = 0
    n = len(data)
    while True:
        if n - pos < 5:
            return _NEED
        ctype, major, length = data[pos], data[pos + 1], (data[pos + 3] << 8) | data[pos + 4]
        if ctype != _HANDSHAKE or major != 3 or length > MAX_RECORD:
            return _NOT
        if n - pos - 5 < length:
            return _NEED  # BoringSSL reads a record whole before looking into it
        message += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if len(message) >= 4:
            if message[0] != _CLIENT_HELLO:
                return _NOT
            size = int.from_bytes(message[1:4], "big")
            if size > MAX_MESSAGE:
                return _NOT
            if len(message) >= 4 + size:
                return _parse_body(bytes(message[4:4 + size]))


class _Reader:
    __slots__ = ("b", "i")

    def __init__(self, b: bytes) -> None:
        self.b = b
        self.i = 0

    def left(self) -> int:
        return len(self.b) - self.i

    def take(self, k: int) -> bytes:
        if k < 0 or self.left() < k:
            raise ValueError("short")
        out = self.b[self.i:self.i + k]
        self.i += k
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def vec8(self) -> bytes:
        return self.take(self.u8())

    def vec16(self) -> bytes:
        return self.take(self.u16())


def _parse_body(body: bytes) -> ClientHello:
    try:
        r = _Reader(body)
        legacy_version = r.u16()
        r.take(32)  # random
        if len(r.vec8()) > 32:
            return _NOT  # session id
        suites = r.vec16()
        if len(suites) < 2 or len(suites) % 2:
            return _NOT
        if not r.vec8():
            return _NOT  # compression methods
        extensions: dict[int, bytes] = {}
        if r.left():
            ext = _Reader(r.vec16())
            if r.left():
                return _NOT
            while ext.left():
                etype = ext.u16()
                if etype in extensions:
                    return _NOT
                extensions[etype] = ext.vec16()
    except ValueError:
        return _NOT
    alpn = _alpn(extensions.get(_EXT_ALPN))
    if not _version_ok(legacy_version, extensions.get(_EXT_SUPPORTED_VERSIONS)):
        return _NOT
    sni = extensions.get(_EXT_SERVER_NAME)
    name = ""
    if sni is not None:
        name = _server_name(sni)
        if name is None:
            return _NOT
    return ClientHello(TLS, name, alpn)


def _version_ok(legacy: int, supported: bytes | None) -> bool:
    if supported is None:
        return legacy >= _TLS10
    try:
        r = _Reader(supported)
        versions = _Reader(r.vec8())
        if r.left() or versions.left() % 2:
            return False
        offered = [versions.u16() for _ in range(versions.left() // 2)]
    except ValueError:
        return False
    return any(_TLS10 <= v <= _TLS13 for v in offered)


def _server_name(ext: bytes) -> str | None:
    """BoringSSL's ext_sni_parse_clienthello: one host_name entry, nothing else."""
    try:
        r = _Reader(ext)
        names = _Reader(r.vec16())
        kind = names.u8()
        host = names.vec16()
    except ValueError:
        return None
    if r.left() or names.left() or kind != 0 or not host or len(host) > 255 or 0 in host:
        return None
    return host.decode("latin-1").lower()


def _alpn(ext: bytes | None) -> tuple[str, ...]:
    """Envoy's onALPN: a well-formed, non-empty list of non-empty names, else none."""
    if ext is None:
        return ()
    try:
        r = _Reader(ext)
        names = _Reader(r.vec16())
        if r.left() or names.left() < 2:
            return ()
        out = []
        while names.left():
            name = names.vec8()
            if not name:
                return ()
            out.append(name.decode("latin-1"))
    except ValueError:
        return ()
    return tuple(out)
