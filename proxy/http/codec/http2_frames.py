"""HTTP/2 (RFC 9113) server side without I/O: frames in, events out; calls in, frames out. The
hot-path engine of http2_server.Http2ServerCodec; the `h2` library stays the reference
(http2_engines.H2Engine) and tests/unit/test_h2_frames_differential.py drives both with the
same bytes.

What it does, as h2 4.x does it for a server (validate_inbound_headers on):
- the client preface, then frames: a frame longer than our SETTINGS_MAX_FRAME_SIZE
  (16384) is FRAME_SIZE_ERROR; malformed bodies as hyperframe parses them (FRAME_SIZE_ERROR
  for a wrong length, PROTOCOL_ERROR for bad padding or a stream id the type forbids);
- HEADERS + CONTINUATION assembled (at most 63 CONTINUATIONs; any other frame between them
  is PROTOCOL_ERROR), decoded by hpack_codec.Decoder (an oversized list: ENHANCE_YOUR_CALM);
- stream states: a request opens a stream (odd ids, increasing); DATA / HEADERS after the
  client's END_STREAM reset the stream (STREAM_CLOSED); on a stream closed by RST_STREAM
  they get RST_STREAM(STREAM_CLOSED), on one closed by END_STREAM both ways they are a
  connection error (STREAM_CLOSED); trailers must end the stream;
- header validation equal to h2's validate_headers (after its joining of cookie crumbs,
  which it validates as one field): names without upper case, controls,
  DEL/8-bit bytes or a colon past the first byte; values without NUL/CR/LF and not starting
  or ending in SP/HTAB; `te` only "trailers"; no connection-specific fields; pseudo-headers
  known, unique, first, none in trailers; :method, :scheme, :path (ordinary CONNECT: neither
  :scheme nor :path; :protocol only on CONNECT); :authority or host, equal when both; one
  host; :path not empty; content-length all digits, equal when repeated, and the DATA of
  the stream never more than it nor less at END_STREAM;
- flow control: inbound windows per stream and connection (a peer overrunning one is
  FLOW_CONTROL_ERROR), opened as the owner acknowledges consumed bytes, one WINDOW_UPDATE
  when half a window was consumed (h2's WindowManager); outbound windows from the peer's
  SETTINGS_INITIAL_WINDOW_SIZE and WINDOW_UPDATEs (an overflow: FLOW_CONTROL_ERROR, on a
  stream a stream reset);
- SETTINGS validated and ACKed (header table size to the encoder, window deltas to the
  open streams, max frame size for what we send); PING answered; PRIORITY reported (a
  stream depending on itself is PROTOCOL_ERROR) and otherwise ignored; GOAWAY reported;
  PUSH_PROMISE refused (PROTOCOL_ERROR); unknown frame types ignored.
Deliberate differences from h2: a client's GOAWAY does not end the streams in flight (they
finish, RFC 9113 §6.8; h2 refuses every later frame); an overlong frame is refused from its
header (h2 waits for its whole body); RST_STREAM on any closed stream is ignored (h2 makes it
a connection error on a stream closed normally once it forgot that stream); how a stream
closed is remembered for the last 4096 to 8192 streams (h2: 65536), an older one taking HEADERS is a
PROTOCOL_ERROR rather than STREAM_CLOSED; SETTINGS_HEADER_TABLE_SIZE is advertised and the
decoder takes a table up to it (or 4096), never smaller (as h2, which never applies it).

Events are tuples, kind first: (EV_REQUEST, sid, headers, end), (EV_DATA, sid, data,
flow_controlled_length, end), (EV_TRAILERS, sid, headers), (EV_RESET, sid, error_code,
remote), (EV_WINDOW, sid), (EV_PRIORITY, sid), (EV_GOAWAY, error_code, last_stream_id),
(EV_PING_ACK, payload). A connection error raises H2ProtocolError after queueing GOAWAY.
The events of one input are made before the owner sees any: a stream may close (a reset
later in the same input) while the owner still acts on an earlier event: sending on it then
sends nothing and its window is 0.

Thread affinity: a ServerConnection is one connection's (its worker's). The module's cache of
field names found valid is shared by the workers: a bounded dict from a name to a bool, where
two threads filling it at once write equal values. Must not: do I/O.
"""

from __future__ import annotations

from hpack.exceptions import HPACKError, OversizedHeaderListError

from .hpack_codec import Decoder, Encoder

__all__ = ["ServerConnection", "H2ProtocolError", "EV_REQUEST", "EV_DATA", "EV_TRAILERS",
           "EV_RESET", "EV_WINDOW", "EV_PRIORITY", "EV_GOAWAY", "EV_PING_ACK", "PREFACE",
           "NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
           "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL",
           "COMPRESSION_ERROR", "ENHANCE_YOUR_CALM", "validate_request_headers",
           "validate_trailers"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

EV_REQUEST, EV_DATA, EV_TRAILERS, EV_RESET, EV_WINDOW, EV_PRIORITY, EV_GOAWAY, EV_PING_ACK = \
    range(8)

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 11

T_DATA, T_HEADERS, T_PRIORITY, T_RST, T_SETTINGS, T_PUSH, T_PING, T_GOAWAY, T_WINDOW, T_CONT = \
    range(10)
F_END_STREAM, F_ACK, F_END_HEADERS, F_PADDED, F_PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20

MAX_WINDOW = 2 ** 31 - 1
MAX_INBOUND_FRAME = 16384          # our SETTINGS_MAX_FRAME_SIZE (the default)
CONTINUATION_BACKLOG = 64          # HEADERS + CONTINUATIONs in one block (h2's bound)
_CLOSED_MEMORY = 4096              # closed stream ids remembered (how each was closed)
_NEEDS_STREAM = frozenset({0, 1, 2, 3, 5, 9})   # frame types on a stream (hyperframe's rule)
_NO_STREAM = frozenset({4, 6, 7})               # ... on the connection only
T_ALTSVC = 10

S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 1, 2, 3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 4, 5, 6
S_ENABLE_CONNECT_PROTOCOL = 8


class H2ProtocolError(Exception):
    """A connection error: GOAWAY(error_code) is queued (except for a bad preface)."""

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


def _frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, ftype, flags)) + sid.to_bytes(4, "big") + payload


# -- header validation (h2's validate_headers, inbound, server side) ----------------------------

_CONNECTION_HEADERS = frozenset({b"connection", b"proxy-connection", b"keep-alive",
                                 b"transfer-encoding", b"upgrade"})
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":status", b":protocol"})
# Bytes a field name must not hold: controls and space, upper case, DEL and 8-bit.
_BAD_NAME = bytes(c for c in range(256) if c <= 0x20 or 0x41 <= c <= 0x5A or c >= 0x7F)
# Bytes a field value must not hold. (Tested with translate, not `in`: `b"x" in value` first
# tries its operand as an int and raises and clears a TypeError, ~0.5 µs a test on 3.13.)
_BAD_VALUE = b"\x00\r\n"
_CACHE_OK: dict[bytes, bool] = {}  # names seen valid (names only; bounded)


def _name_ok(name: bytes) -> bool:
    ok = _CACHE_OK.get(name)
    if ok is not None:
        return ok
    ok = bool(name) and len(name.translate(None, _BAD_NAME)) == len(name) and \
        name.find(b":", 1) == -1
    if len(_CACHE_OK) < 4096:
        _CACHE_OK[name] = ok
    return ok


def _check_field(name: bytes, value: bytes) -> None:
    if not _name_ok(name):
        if not name:
            raise H2ProtocolError(PROTOCOL_ERROR, "Received header name with zero length.")
        raise H2ProtocolError(PROTOCOL_ERROR, f"Illegal character in header name: {name!r}")
    if value:
        if len(value.translate(None, _BAD_VALUE)) != len(value):
            raise H2ProtocolError(PROTOCOL_ERROR, f"Illegal character in header value: {value!r}")
        if value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09):
            raise H2ProtocolError(PROTOCOL_ERROR,
                                  f"Received header value surrounded by whitespace {value!r}")
    if name in _CONNECTION_HEADERS:
        raise H2ProtocolError(PROTOCOL_ERROR, f"Connection-specific header field present: {name!r}.")
    if name == b"te" and value.lower() != b"trailers":
        raise H2ProtocolError(PROTOCOL_ERROR, f"Invalid value for TE header: {value!r}")


_M_METHOD, _M_SCHEME, _M_AUTHORITY, _M_PATH, _M_STATUS, _M_PROTOCOL = 1, 2, 4, 8, 16, 32
_PSEUDO_BIT = {b":method": _M_METHOD, b":scheme": _M_SCHEME, b":authority": _M_AUTHORITY,
               b":path": _M_PATH, b":status": _M_STATUS, b":protocol": _M_PROTOCOL}
_SEEN_MAX = 256   # fields remembered valid per connection


def validate_request_headers(headers, seen: set | None = None) -> int | None:
    """Raise H2ProtocolError for a request header list h2 refuses; the content-length it
    declares (None when absent). `seen`: the connection's fields already found valid (a field
    HPACK's dynamic table gives again is checked once; like that table, it is the
    connection's own and bounded)."""
    mask = 0
    regular = False
    method = authority = host = None
    length = None
    cookies = None
    for field in headers:
        name = field[0]
        if name == b"cookie":
            # h2 joins the crumbs first (at the end of the list), then validates the result.
            if cookies is None:
                cookies = [field[1]]
            else:
                cookies.append(field[1])
            continue
        if seen is None or field not in seen:
            _check_field(name, field[1])
            if seen is not None:
                if len(seen) >= _SEEN_MAX:
                    seen.clear()
                seen.add(field)
        if name[0] == 0x3A:  # ":"
            bit = _PSEUDO_BIT.get(name, 0)
            if mask & bit:
                raise H2ProtocolError(PROTOCOL_ERROR, f"Received duplicate pseudo-header field {name!r}")
            if regular:
                raise H2ProtocolError(PROTOCOL_ERROR,
                                      f"Received pseudo-header field out of sequence: {name!r}")
            if not bit:
                raise H2ProtocolError(PROTOCOL_ERROR, f"Received custom pseudo-header field {name!r}")
            mask |= bit
            if bit == _M_METHOD:
                method = field[1]
            elif bit == _M_AUTHORITY:
                authority = field[1]
            elif bit == _M_PATH and not field[1]:
                raise H2ProtocolError(PROTOCOL_ERROR, "An empty :path header is forbidden")
        else:
            regular = True
            if name == b"host":
                if host is not None:
                    raise H2ProtocolError(PROTOCOL_ERROR, "Request header block has multiple Host headers.")
                host = field[1]
            elif name == b"content-length":
                value = field[1]
                if not value.isdigit():
                    raise H2ProtocolError(PROTOCOL_ERROR, f"Invalid content-length header: {value!r}")
                n = int(value)
                if length is not None and n != length:
                    raise H2ProtocolError(PROTOCOL_ERROR, "Conflicting content-length headers")
                length = n
    if cookies is not None:
        _check_field(b"cookie", b"; ".join(cookies))
    if not mask & _M_METHOD:
        raise H2ProtocolError(PROTOCOL_ERROR, "Header block missing mandatory b':method' header")
    connect = method == b"CONNECT"
    if connect and not mask & _M_PROTOCOL:
        if mask & (_M_SCHEME | _M_PATH):
            raise H2ProtocolError(PROTOCOL_ERROR, "Ordinary CONNECT MUST NOT include :scheme or :path")
    elif mask & (_M_SCHEME | _M_PATH) != _M_SCHEME | _M_PATH:
        raise H2ProtocolError(PROTOCOL_ERROR, "Header block missing mandatory :scheme or :path header")
    if mask & _M_STATUS:
        raise H2ProtocolError(PROTOCOL_ERROR, "Encountered response-only headers {b':status'}")
    if not connect and mask & _M_PROTOCOL:
        raise H2ProtocolError(PROTOCOL_ERROR, "Encountered connect-request-only headers")
    if authority is None and host is None:
        raise H2ProtocolError(PROTOCOL_ERROR,
                              "Request header block does not have an :authority or Host header.")
    if authority is not None and host is not None and authority != host:
        raise H2ProtocolError(PROTOCOL_ERROR,
                              "Request header block has mismatched :authority and Host headers")
    return length


def validate_trailers(headers) -> int | None:
    """Trailers: the field rules, no pseudo-headers. The content-length they carry, if any
    (h2 takes it as the stream's new expectation)."""
    length = None
    cookies = None
    for field in headers:
        name, value = field[0], field[1]
        if name == b"cookie":
            if cookies is None:
                cookies = [value]
            else:
                cookies.append(value)
            continue
        _check_field(name, value)
        if name[0] == 0x3A:
            if name not in _PSEUDO:
                raise H2ProtocolError(PROTOCOL_ERROR, f"Received custom pseudo-header field {name!r}")
            raise H2ProtocolError(PROTOCOL_ERROR, "Received pseudo-header in trailer")
        if name == b"content-length":
            if not value.isdigit():
                raise H2ProtocolError(PROTOCOL_ERROR, f"Invalid content-length header: {value!r}")
            n = int(value)
            if length is not None and n != length:
                raise H2ProtocolError(PROTOCOL_ERROR, "Conflicting content-length headers")
            length = n
    if cookies is not None:
        _check_field(b"cookie", b"; ".join(cookies))
    return length


# -- frame bodies -------------------------------------------------------------------------------

def _check_body(ftype: int, flags: int, payload: bytes) -> None:
    """The body checks hyperframe makes of a frame before h2 looks at it (used where the
    frame is refused anyway, so that the error code is the same)."""
    n = len(payload)
    fsize = H2ProtocolError(FRAME_SIZE_ERROR, "Frame data missing or invalid")
    if ftype in (T_DATA, T_HEADERS, T_PUSH):
        k = 0
        pad = 0
        if flags & F_PADDED:
            if not n:
                raise fsize
            pad, k = payload[0], 1
        if ftype == T_HEADERS and flags & F_PRIORITY and n - k < 5:
            raise fsize
        if ftype == T_PUSH:
            if n - k < 4:
                raise fsize
            promised = int.from_bytes(payload[k:k + 4], "big")
            if not promised or promised & 1:
                raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with non-compliant data")
        if pad and pad >= (n if ftype == T_DATA else n - k) + (k if ftype == T_PUSH else 0):
            raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with invalid padding.")
    elif ftype == T_PRIORITY and n != 5 or ftype in (T_RST, T_WINDOW) and n != 4 or \
            ftype == T_PING and n != 8 or ftype == T_GOAWAY and n < 8:
        raise fsize
    elif ftype == T_SETTINGS:
        if flags & F_ACK and n:
            raise H2ProtocolError(PROTOCOL_ERROR, "SETTINGS ack frame must not have payload")
        if n % 6:
            raise fsize
    elif ftype == T_WINDOW and not int.from_bytes(payload, "big") & 0x7FFFFFFF:
        raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with non-compliant data")
    elif ftype == T_ALTSVC and (n < 2 or int.from_bytes(payload[:2], "big") > n - 2):
        raise H2ProtocolError(FRAME_SIZE_ERROR, "Invalid ALTSVC frame body.")


# -- connection ---------------------------------------------------------------------------------

class _Window:
    """An inbound window and when to reopen it (h2's WindowManager)."""

    __slots__ = ("max", "current", "processed")

    def __init__(self, size: int) -> None:
        self.max = size
        self.current = size
        self.processed = 0

    def consumed(self, n: int) -> None:
        self.current -= n
        if self.current < 0:
            raise H2ProtocolError(FLOW_CONTROL_ERROR, "Flow control window shrunk below 0")

    def opened(self, n: int) -> None:
        self.current += n
        if self.current > MAX_WINDOW:
            raise H2ProtocolError(FLOW_CONTROL_ERROR, "Flow control window mustn't exceed 2**31 - 1")
        if self.current > self.max:
            self.max = self.current

    def process(self, n: int) -> int:
        self.processed += n
        if not self.processed:
            return 0
        room = self.max - self.current
        if (self.current == 0 and self.processed > min(1024, self.max // 4)) or \
                self.processed >= self.max // 2:
            inc = min(self.processed, room)
            self.processed = 0
            self.current += inc
            return inc
        return 0


class _Stream:
    __slots__ = ("recv_open", "send_open", "window", "in_size", "out_window", "expected",
                 "received", "reset_by")

    def __init__(self, in_size: int, out_size: int) -> None:
        self.recv_open = True    # the client may still send (no END_STREAM from it yet)
        self.send_open = True    # we may still send
        self.window: _Window | None = None   # inbound, made at the first DATA
        self.in_size = in_size
        self.out_window = out_size
        self.expected = None     # content-length declared
        self.received = 0        # DATA bytes received
        self.reset_by = False    # closed by a RST_STREAM (either way)


class ServerConnection:
    __slots__ = ("out", "decoder", "encoder", "streams", "closed", "highest", "window",
                 "out_window", "peer_initial_window", "max_outbound_frame_size",
                 "local_initial_window", "_buf", "_preface", "_block", "_block_sid",
                 "_block_flags", "_block_frames", "_block_priority", "going_away",
                 "peer_settings", "_seen")

    def __init__(self, initial_stream_window: int = 65535,
                 initial_connection_window: int = 65535, max_header_list_size: int = 65536,
                 header_table_size: int = 4096, enable_connect_protocol: bool = False) -> None:
        self.out: list[bytes] = []
        # The decoder's table: 4096 until the client changes it, up to what our
        # SETTINGS_HEADER_TABLE_SIZE allows (never below HPACK's default 4096, which the client
        # may use until it has our SETTINGS).
        self.decoder = Decoder(max_header_list_size)
        self.decoder.max_allowed_table_size = max(4096, header_table_size)
        self.encoder = Encoder()
        self.streams: dict[int, _Stream] = {}
        self.closed: dict[int, bool] = {}   # closed stream id -> closed by RST_STREAM
        self.highest = 0                     # highest stream id the client opened
        self.local_initial_window = min(initial_stream_window, MAX_WINDOW)
        self.window = _Window(65535)         # the connection's inbound window
        self.out_window = 65535              # ... and outbound
        self.peer_initial_window = 65535
        self.max_outbound_frame_size = 16384
        self.peer_settings: dict[int, int] = {}
        self._buf = b""
        self._preface = PREFACE
        self._block: list[bytes] | None = None  # a header block waiting for CONTINUATION
        self._block_sid = 0
        self._block_flags = 0
        self._block_frames = 0
        self._block_priority = None
        self.going_away = False              # the client sent GOAWAY
        self._seen: set = set()              # header fields found valid (validate_request_headers)
        settings = ((S_HEADER_TABLE_SIZE, header_table_size), (S_ENABLE_PUSH, 0),
                    (S_INITIAL_WINDOW_SIZE, self.local_initial_window),
                    (S_MAX_FRAME_SIZE, MAX_INBOUND_FRAME),
                    (S_ENABLE_CONNECT_PROTOCOL, int(enable_connect_protocol)),  # RFC 8441 §3
                    (S_MAX_CONCURRENT_STREAMS, MAX_WINDOW),
                    (S_MAX_HEADER_LIST_SIZE, max_header_list_size))
        self.out.append(_frame(T_SETTINGS, 0, 0, b"".join(
            k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in settings)))
        extra = min(initial_connection_window, MAX_WINDOW) - 65535
        if extra > 0:
            self.window.opened(extra)
            self.out.append(_frame(T_WINDOW, 0, 0, extra.to_bytes(4, "big")))

    @property
    def highest_inbound_stream_id(self) -> int:
        return self.highest

    def data_to_send(self) -> bytes:
        out = self.out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    # -- input ------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list:
        if self._preface:
            p = self._preface
            n = min(len(p), len(data))
            if data[:n] != p[:n]:
                raise H2ProtocolError(PROTOCOL_ERROR, "Invalid HTTP/2 preamble.")
            self._preface = p[n:]
            data = data[n:]
        buf = self._buf + data if self._buf else data
        events: list = []
        i = 0
        end = len(buf)
        try:
            while end - i >= 9:
                length = (buf[i] << 16) | (buf[i + 1] << 8) | buf[i + 2]
                ftype = buf[i + 3]
                if ftype in _NEEDS_STREAM:
                    if not (buf[i + 5] & 0x7F or buf[i + 6] or buf[i + 7] or buf[i + 8]):
                        raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with invalid header: "
                                                              "Stream ID must be non-zero")
                elif ftype in _NO_STREAM and (buf[i + 5] & 0x7F or buf[i + 6] or buf[i + 7]
                                              or buf[i + 8]):
                    raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with invalid header: "
                                                          "Stream ID must be zero")
                if length > MAX_INBOUND_FRAME:
                    raise H2ProtocolError(FRAME_SIZE_ERROR, f"Received overlong frame: length {length}, "
                                                            f"max {MAX_INBOUND_FRAME}")
                j = i + 9 + length
                if j > end:
                    break
                flags = buf[i + 4]
                sid = int.from_bytes(buf[i + 5:i + 9], "big") & 0x7FFFFFFF
                payload = buf[i + 9:j]
                i = j
                self._frame_in(events, ftype, flags, sid, payload)
        except H2ProtocolError as e:
            self._buf = b""
            self.close_connection(e.error_code)
            e.events = events
            raise
        self._buf = buf[i:] if i < end else b""
        return events

    def _frame_in(self, events: list, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self._block is not None:
            if ftype != T_CONT or sid != self._block_sid:
                _check_body(ftype, flags, payload)
                raise H2ProtocolError(PROTOCOL_ERROR, "Invalid frame during header block.")
            self._block.append(payload)
            self._block_frames += 1
            if self._block_frames > CONTINUATION_BACKLOG:
                raise H2ProtocolError(PROTOCOL_ERROR, "Too many continuation frames received.")
            if flags & F_END_HEADERS:
                block, self._block = b"".join(self._block), None
                if self._block_flags < 0:
                    raise H2ProtocolError(PROTOCOL_ERROR, "Received pushed stream")
                self._headers(events, sid, self._block_flags, block, self._block_priority)
            return
        if ftype == T_DATA:
            self._data(events, flags, sid, payload)
        elif ftype == T_HEADERS:
            if not sid:
                raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with invalid header")
            k = 0
            n = len(payload)
            pad = 0
            if flags & F_PADDED:
                if not n:
                    raise H2ProtocolError(FRAME_SIZE_ERROR, "Frame data missing or invalid")
                pad = payload[0]
                k = 1
            priority = None
            if flags & F_PRIORITY:
                if n - k < 5:
                    raise H2ProtocolError(FRAME_SIZE_ERROR, "Frame data missing or invalid")
                priority = int.from_bytes(payload[k:k + 4], "big") & 0x7FFFFFFF
                k += 5
            if pad and pad >= n - (1 if flags & F_PADDED else 0):
                raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with invalid padding.")
            block = payload[k:n - pad] if (k or pad) else payload
            if not flags & F_END_HEADERS:
                self._block = [block]
                self._block_sid = sid
                self._block_flags = flags
                self._block_frames = 1
                self._block_priority = priority
                return
            self._headers(events, sid, flags, block, priority)
        elif ftype == T_WINDOW:
            if len(payload) != 4:
                raise H2ProtocolError(FRAME_SIZE_ERROR, "Frame data missing or invalid")
            inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
            if not inc:
                raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with non-compliant data")
            if sid:
                st = self.streams.get(sid)
                if st is None:
                    if sid > self.highest:
                        raise H2ProtocolError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
                    return  # closed: ignored
                st.out_window += inc
                if st.out_window > MAX_WINDOW:
                    self._local_reset(events, sid, st, FLOW_CONTROL_ERROR)
                    return
            else:
                self.out_window += inc
                if self.out_window > MAX_WINDOW:
                    raise H2ProtocolError(FLOW_CONTROL_ERROR, "Flow control window mustn't exceed 2**31 - 1")
            events.append((EV_WINDOW, sid))
        elif ftype == T_RST:
            if not sid:
                raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with invalid header")
            if len(payload) != 4:
                raise H2ProtocolError(FRAME_SIZE_ERROR, "Frame data missing or invalid")
            st = self.streams.pop(sid, None)
            if st is not None:
                self._forget(sid, True)
                events.append((EV_RESET, sid, int.from_bytes(payload, "big"), True))
        elif ftype == T_SETTINGS:
            self._settings(flags, sid, payload)
        elif ftype == T_PING:
            if sid:
                raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with invalid header")
            if len(payload) != 8:
                raise H2ProtocolError(FRAME_SIZE_ERROR, "Frame data missing or invalid")
            if flags & F_ACK:
                events.append((EV_PING_ACK, payload))
            else:
                self.out.append(_frame(T_PING, F_ACK, 0, payload))
        elif ftype == T_PRIORITY:
            if not sid:
                raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with invalid header")
            if len(payload) != 5:
                raise H2ProtocolError(FRAME_SIZE_ERROR, "Frame data missing or invalid")
            if int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == sid:
                raise H2ProtocolError(PROTOCOL_ERROR, f"Stream {sid} may not depend on itself")
            events.append((EV_PRIORITY, sid))
        elif ftype == T_GOAWAY:
            if sid:
                raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with invalid header")
            if len(payload) < 8:
                raise H2ProtocolError(FRAME_SIZE_ERROR, "Frame data missing or invalid")
            self.going_away = True
            events.append((EV_GOAWAY, int.from_bytes(payload[4:8], "big"),
                           int.from_bytes(payload[:4], "big") & 0x7FFFFFFF))
        elif ftype == T_CONT:
            if not sid:
                raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with invalid header")
            raise H2ProtocolError(PROTOCOL_ERROR if sid not in self.closed or self.closed[sid]
                                  else STREAM_CLOSED, "Received unexpected CONTINUATION frame")
        elif ftype == T_PUSH:
            _check_body(ftype, flags, payload)
            if not flags & F_END_HEADERS:  # its header block is assembled first (as h2 does)
                self._block = [b""]
                self._block_sid = sid
                self._block_flags = -1
                self._block_frames = 1
                return
            raise H2ProtocolError(PROTOCOL_ERROR, "Received pushed stream")
        elif ftype == T_ALTSVC:
            # Ignored by a server (RFC 7838), but hyperframe parses it first.
            if len(payload) < 2 or int.from_bytes(payload[:2], "big") > len(payload) - 2:
                raise H2ProtocolError(FRAME_SIZE_ERROR, "Invalid ALTSVC frame body.")
        # Other types (ORIGIN, extensions): ignored (RFC 9113 §5.5).

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with invalid header")
        if flags & F_ACK:
            if payload:
                raise H2ProtocolError(PROTOCOL_ERROR, "SETTINGS ack frame must not have payload")
            return
        if len(payload) % 6:
            raise H2ProtocolError(FRAME_SIZE_ERROR, "Frame data missing or invalid")
        got: dict[int, int] = {}
        for k in range(0, len(payload), 6):
            got[int.from_bytes(payload[k:k + 2], "big")] = int.from_bytes(payload[k + 2:k + 6], "big")
        for key, value in got.items():
            if key == S_ENABLE_PUSH and value not in (0, 1):
                raise H2ProtocolError(PROTOCOL_ERROR, f"Setting {key} has invalid value {value}")
            if key == S_INITIAL_WINDOW_SIZE and value > MAX_WINDOW:
                raise H2ProtocolError(FLOW_CONTROL_ERROR, f"Setting {key} has invalid value {value}")
            if key == S_MAX_FRAME_SIZE and not 16384 <= value <= 16777215:
                raise H2ProtocolError(PROTOCOL_ERROR, f"Setting {key} has invalid value {value}")
            if key == S_ENABLE_CONNECT_PROTOCOL and value not in (0, 1):
                raise H2ProtocolError(PROTOCOL_ERROR, f"Setting {key} has invalid value {value}")
        self.peer_settings.update(got)
        for key, value in got.items():
            if key == S_HEADER_TABLE_SIZE:
                self.encoder.header_table_size = value
            elif key == S_INITIAL_WINDOW_SIZE:
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for st in self.streams.values():
                    st.out_window += delta
                    if st.out_window > MAX_WINDOW:
                        raise H2ProtocolError(FLOW_CONTROL_ERROR,
                                              "Flow control window mustn't exceed 2**31 - 1")
            elif key == S_MAX_FRAME_SIZE:
                self.max_outbound_frame_size = value
        self.out.append(_frame(T_SETTINGS, F_ACK, 0))

    def _forget(self, sid: int, by_reset: bool) -> None:
        closed = self.closed
        closed[sid] = by_reset
        if len(closed) > 2 * _CLOSED_MEMORY:  # keep the newest (amortised: once per 4096)
            newest = list(closed.items())[-_CLOSED_MEMORY:]
            closed.clear()
            closed.update(newest)

    def _local_reset(self, events: list, sid: int, st: _Stream, code: int) -> None:
        """A stream error: RST_STREAM, the owner told (remote False)."""
        del self.streams[sid]
        self._forget(sid, True)
        self.out.append(_frame(T_RST, 0, sid, code.to_bytes(4, "big")))
        events.append((EV_RESET, sid, code, False))

    def _closed_frame(self, sid: int) -> None:
        """HEADERS / DATA on a stream no longer open: RST_STREAM(STREAM_CLOSED) when it was
        reset, a connection error when it ended normally or never opened."""
        by_reset = self.closed.get(sid)
        if by_reset:
            self.out.append(_frame(T_RST, 0, sid, STREAM_CLOSED.to_bytes(4, "big")))
            return
        if by_reset is None:
            raise H2ProtocolError(PROTOCOL_ERROR, f"Stream {sid} was never opened")
        raise H2ProtocolError(STREAM_CLOSED, f"Stream {sid} is closed")

    def _data(self, events: list, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with invalid header")
        flow = n = len(payload)
        data = payload
        if flags & F_PADDED:
            if not n:
                raise H2ProtocolError(FRAME_SIZE_ERROR, "Frame data missing or invalid")
            pad = payload[0]
            if pad and pad >= n:
                raise H2ProtocolError(PROTOCOL_ERROR, "Received frame with invalid padding.")
            data = payload[1:n - pad]
        self.window.consumed(flow)
        st = self.streams.get(sid)
        if st is None:
            if sid > self.highest:
                raise H2ProtocolError(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            inc = self.window.process(flow)   # the connection gets them back
            if inc:
                self.out.append(_frame(T_WINDOW, 0, 0, inc.to_bytes(4, "big")))
            self.out.append(_frame(T_RST, 0, sid, STREAM_CLOSED.to_bytes(4, "big")))
            return
        if not st.recv_open:
            inc = self.window.process(flow)
            if inc:
                self.out.append(_frame(T_WINDOW, 0, 0, inc.to_bytes(4, "big")))
            self._local_reset(events, sid, st, STREAM_CLOSED)
            return
        window = st.window
        if window is None:
            window = st.window = _Window(st.in_size)
        window.consumed(flow)
        st.received += len(data)
        end = bool(flags & F_END_STREAM)
        if st.expected is not None and (st.expected < st.received or
                                        (end and st.expected != st.received)):
            raise H2ProtocolError(PROTOCOL_ERROR, f"InvalidBodyLengthError: Expected {st.expected} "
                                                  f"bytes, received {st.received}")
        if end:
            self._remote_end(sid, st)
        events.append((EV_DATA, sid, data, flow, end))

    def _remote_end(self, sid: int, st: _Stream) -> None:
        st.recv_open = False
        if not st.send_open:
            del self.streams[sid]
            self._forget(sid, False)

    def _headers(self, events: list, sid: int, flags: int, block: bytes, priority) -> None:
        st = self.streams.get(sid)
        if st is None and sid <= self.highest:
            self._decode(block)  # the decoder's table must follow the peer's
            self._closed_frame(sid)
            return
        headers = self._decode(block)
        end = bool(flags & F_END_STREAM)
        if st is None:
            if not sid & 1:
                raise H2ProtocolError(PROTOCOL_ERROR, "Invalid stream ID for peer.")
            st = _Stream(self.local_initial_window, self.peer_initial_window)
            self.streams[sid] = st
            self.highest = sid
            if end:
                st.recv_open = False
            st.expected = validate_request_headers(headers, self._seen)
            events.append((EV_REQUEST, sid, headers, end))
        elif not st.recv_open:
            self._local_reset(events, sid, st, STREAM_CLOSED)
            return
        else:
            if not end:
                raise H2ProtocolError(PROTOCOL_ERROR, "Trailers must have END_STREAM set")
            self._remote_end(sid, st)
            length = validate_trailers(headers)
            if length is not None:
                st.expected = length
            events.append((EV_TRAILERS, sid, headers))
        if priority is not None:
            if priority == sid:
                raise H2ProtocolError(PROTOCOL_ERROR, f"Stream {sid} may not depend on itself")
            events.append((EV_PRIORITY, sid))

    def _decode(self, block: bytes) -> list:
        """hpack_codec raises hpack's exception classes: an oversized list is an HPACK bomb
        (ENHANCE_YOUR_CALM, as h2), any other a bad block (PROTOCOL_ERROR, as h2)."""
        try:
            return self.decoder.decode(block, raw=True)
        except OversizedHeaderListError as e:
            raise H2ProtocolError(ENHANCE_YOUR_CALM, f"Oversized header block: {e}") from e
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as e:
            raise H2ProtocolError(PROTOCOL_ERROR, f"Error decoding header block: {e}") from e

    # -- output ----------------------------------------------------------------------------
    def local_flow_control_window(self, sid: int) -> int:
        st = self.streams.get(sid)
        if st is None or not st.send_open:
            return 0
        return min(self.out_window, st.out_window)

    def send_headers(self, sid: int, headers, end_stream: bool = False) -> None:
        st = self.streams.get(sid)
        if st is None or not st.send_open:
            return  # closed meanwhile (a reset later in the same input): nothing to send
        block = self.encoder.encode(headers)
        size = self.max_outbound_frame_size
        flags = F_END_STREAM if end_stream else 0
        out = self.out
        if len(block) <= size:
            out.append(_frame(T_HEADERS, flags | F_END_HEADERS, sid, block))
        else:
            chunks = [block[k:k + size] for k in range(0, len(block), size)]
            out.append(_frame(T_HEADERS, flags, sid, chunks[0]))
            for k, chunk in enumerate(chunks[1:], 2):
                out.append(_frame(T_CONT, F_END_HEADERS if k == len(chunks) else 0, sid, chunk))
        if end_stream:
            self._local_end(sid, st)

    def send_data(self, sid: int, data: bytes, end_stream: bool = False) -> None:
        """One DATA frame; the caller keeps within local_flow_control_window and
        max_outbound_frame_size."""
        st = self.streams.get(sid)
        if st is None or not st.send_open:
            return  # closed meanwhile: nothing to send
        n = len(data)
        self.out_window -= n
        st.out_window -= n
        self.out.append(_frame(T_DATA, F_END_STREAM if end_stream else 0, sid, data))
        if end_stream:
            self._local_end(sid, st)

    def end_stream(self, sid: int) -> None:
        self.send_data(sid, b"", True)

    def _local_end(self, sid: int, st: _Stream) -> None:
        st.send_open = False
        if not st.recv_open:
            del self.streams[sid]
            self._forget(sid, False)

    def reset_stream(self, sid: int, code: int) -> None:
        st = self.streams.pop(sid, None)
        if st is None:
            raise H2ProtocolError(STREAM_CLOSED, f"Stream {sid} is closed")
        self._forget(sid, True)
        self.out.append(_frame(T_RST, 0, sid, code.to_bytes(4, "big")))

    def acknowledge_received_data(self, n: int, sid: int) -> None:
        inc = self.window.process(n)
        if inc:
            self.out.append(_frame(T_WINDOW, 0, 0, inc.to_bytes(4, "big")))
        st = self.streams.get(sid)
        if st is not None and st.window is not None:
            inc = st.window.process(n)
            if inc:
                self.out.append(_frame(T_WINDOW, 0, sid, inc.to_bytes(4, "big")))

    def ping(self, payload: bytes) -> None:
        self.out.append(_frame(T_PING, 0, 0, payload))

    def close_connection(self, code: int) -> None:
        self.out.append(_frame(T_GOAWAY, 0, 0, self.highest.to_bytes(4, "big") + code.to_bytes(4, "big")))

    def goaway_frame(self, code: int) -> bytes:
        """A GOAWAY naming the last stream taken, not queued (the caller writes it)."""
        return _frame(T_GOAWAY, 0, 0, self.highest.to_bytes(4, "big") + code.to_bytes(4, "big"))
