"""Our HTTP/2 server engine (http2_frames.ServerConnection) against the reference (the h2
library, http2_h2_engine.H2Engine), and the downstream codec (Http2ServerCodec) on each: the
same client bytes go to both, from a seeded generator of valid conversations (HPACK with
Huffman and the dynamic table, padding, PRIORITY, CONTINUATION, trailers, resets, window
updates, pings, SETTINGS) and of mutations of them (bytes flipped, frame headers changed,
frames dropped, duplicated or inserted, invalid header fields). Both must report the same
events (or the same connection error code) and send the same frames; header blocks are
compared decoded, SETTINGS as their values.

Deliberate differences (not generated here, see http2_frames' docstring): a client's GOAWAY,
RST_STREAM on a stream h2 has forgotten."""

from __future__ import annotations

import random

import pytest
from hpack import Decoder as RefDecoder
from hpack import Encoder as RefEncoder

from proxy.http.codec.http2_frames import PREFACE, H2ProtocolError, ServerConnection
from proxy.http.codec.http2_h2_engine import H2Engine
from proxy.http.codec.http2_server import Http2Options, Http2ServerCodec


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return n.to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


# -- comparing output ---------------------------------------------------------------------------

def frames_of(data: bytes) -> list:
    """The frames in `data`, header blocks joined and decoded, SETTINGS as dicts."""
    out, i, block, decoder = [], 0, None, RefDecoder()
    decoder.max_header_list_size = 1 << 30
    while i + 9 <= len(data):
        n = int.from_bytes(data[i:i + 3], "big")
        ftype, flags, sid = data[i + 3], data[i + 4], int.from_bytes(data[i + 5:i + 9], "big")
        payload = data[i + 9:i + 9 + n]
        i += 9 + n
        if ftype in (1, 9):
            if ftype == 1:
                block = [flags & 1, sid, payload]
            else:
                block[2] += payload
            if flags & 4:
                out.append(("HEADERS", block[1], block[0], decoder.decode(block[2], raw=True)))
                block = None
        elif ftype == 4:
            out.append(("SETTINGS", flags, {int.from_bytes(payload[k:k + 2], "big"):
                                            int.from_bytes(payload[k + 2:k + 6], "big")
                                            for k in range(0, len(payload), 6)}))
        else:
            out.append((ftype, flags, sid, payload))
    assert i == len(data)
    return out


def _cookies_joined(fields) -> list:
    """h2 joins cookie crumbs (at the end, RFC 9113 §8.2.3); ours leaves that to the codec."""
    crumbs = [v for n, v in fields if n == b"cookie"]
    out = [(n, v) for n, v in fields if n != b"cookie"]
    return out + [(b"cookie", b"; ".join(crumbs))] if crumbs else out


def _norm(events: list) -> list:
    return [(e[0], e[1], _cookies_joined(e[2])) + e[3:] if e[0] in (0, 2) else e for e in events]


def run_engine(make, chunks: list[bytes]):
    """Feed `chunks`; the events of each, then ("error", code) if one came; and the frames
    sent. The error's events are dropped (h2 returns none from the failing call)."""
    eng = make()
    log = []
    for chunk in chunks:
        try:
            log.append(_norm(eng.receive_data(chunk)))
        except H2ProtocolError as e:
            log.append(("error", e.error_code))
            break
    return log, frames_of(eng.data_to_send())


def engines(opts: Http2Options):
    args = (opts.initial_stream_window_size, opts.initial_connection_window_size,
            opts.max_header_list_bytes, opts.hpack_table_size)
    return (lambda: ServerConnection(*args)), (lambda: H2Engine(*args))


# -- generating client bytes --------------------------------------------------------------------

NAMES = [b"accept", b"user-agent", b"x-custom", b"cookie", b"content-type", b"x-empty",
         b"accept-encoding", b"te", b"via"]


class Client:
    """A seeded client writing a conversation: valid unless `mutate` is set."""

    def __init__(self, rng: random.Random, opts: Http2Options) -> None:
        self.rng = rng
        self.enc = RefEncoder()
        self.next_sid = 1
        self.open: dict[int, int | None] = {}   # stream -> remaining content-length (None)
        self.window = 65535                     # the connection's window the server gave

    def headers_frames(self, sid: int, fields, end: bool) -> list[bytes]:
        rng = self.rng
        block = self.enc.encode(fields, huffman=rng.random() < 0.5)
        flags = 1 if end else 0
        prefix = b""
        if rng.random() < 0.2:
            flags |= 0x20
            prefix += (rng.choice([0, sid - 2 if sid > 2 else 0]) | (rng.random() < 0.3) << 31
                       ).to_bytes(4, "big") + bytes((rng.randrange(256),))
        pad = 0
        if rng.random() < 0.2:
            flags |= 0x8
            pad = rng.randrange(0, 20)
            prefix = bytes((pad,)) + prefix
        if len(block) > 8 and rng.random() < 0.3:
            cut = rng.randrange(1, len(block))
            first, rest = block[:cut], block[cut:]
            out = [frame(1, flags, sid, prefix + first + b"\0" * pad)]
            while rest:
                cut = rng.randrange(1, len(rest) + 1)
                part, rest = rest[:cut], rest[cut:]
                out.append(frame(9, 0 if rest else 4, sid, part))
            return out
        return [frame(1, flags | 4, sid, prefix + block + b"\0" * pad)]

    def request(self) -> list[bytes]:
        rng = self.rng
        sid = self.next_sid
        self.next_sid += 2
        method = rng.choice([b"GET", b"POST", b"PUT", b"HEAD"])
        fields = [(b":method", method), (b":scheme", b"http"),
                  (b":path", rng.choice([b"/", b"/a?b=c", b"/x/" + b"y" * rng.randrange(50)])),
                  (b":authority", b"h2.test")]
        for _ in range(rng.randrange(6)):
            name = rng.choice(NAMES)
            value = b"trailers" if name == b"te" else \
                bytes(rng.choice(b"abcdefgh=;/ ") for _ in range(rng.randrange(30))).strip()
            fields.append((name, value))
        body = rng.random() < 0.5
        length = None
        if body and rng.random() < 0.5:
            length = rng.randrange(0, 3000)
            fields.append((b"content-length", str(length).encode()))
        self.open[sid] = length
        return self.headers_frames(sid, fields, not body)

    def data(self, sid: int, end: bool) -> list[bytes]:
        rng = self.rng
        remaining = self.open[sid]
        if remaining is not None:
            n = remaining if end else rng.randrange(0, remaining + 1)
            self.open[sid] = remaining - n
        else:
            n = rng.randrange(0, 5000)
        out = []
        while True:
            part = min(n, 16000)
            pad = rng.randrange(0, 10) if rng.random() < 0.2 else None
            payload = b"d" * part
            flags = 0
            if pad is not None:
                flags |= 0x8
                payload = bytes((pad,)) + payload + b"\0" * pad
            n -= part
            last = n == 0
            out.append(frame(0, flags | (1 if end and last else 0), sid, payload))
            if last:
                return out

    def conversation(self, steps: int) -> list[bytes]:
        rng = self.rng
        out = [PREFACE]
        settings = b""
        for key, value in ((1, rng.choice([0, 256, 4096])), (2, 0), (4, rng.choice([100, 65535, 1 << 20])),
                           (5, rng.choice([16384, 32768])), (3, 100)):
            if rng.random() < 0.6:
                settings += key.to_bytes(2, "big") + value.to_bytes(4, "big")
        out.append(frame(4, 0, 0, settings))
        for _ in range(steps):
            r = rng.random()
            live = list(self.open)
            if r < 0.3 or not live:
                out += self.request()
                if self.open[self.next_sid - 2] is not None and rng.random() < 0.5:
                    out += self.data(self.next_sid - 2, True)
                    del self.open[self.next_sid - 2]
            elif r < 0.5:
                sid = rng.choice(live)
                end = rng.random() < 0.5
                out += self.data(sid, end)
                if end:
                    del self.open[sid]
            elif r < 0.57:
                sid = rng.choice(live)
                if self.open[sid] in (None, 0):
                    trailers = [(b"x-trailer", b"t"), (b"x-sum", b"%d" % rng.randrange(99))]
                    out += self.headers_frames(sid, trailers, True)
                    del self.open[sid]
            elif r < 0.65:
                sid = rng.choice(live)
                out.append(frame(3, 0, sid, rng.choice([0, 8, 2, 99]).to_bytes(4, "big")))
                del self.open[sid]
            elif r < 0.73:
                sid = rng.choice([0] + live)
                out.append(frame(8, 0, sid, rng.randrange(1, 70000).to_bytes(4, "big")))
            elif r < 0.8:
                out.append(frame(6, rng.choice([0, 1]), 0, rng.randbytes(8)))
            elif r < 0.86:
                sid = rng.choice(live + [self.next_sid + 10])
                out.append(frame(2, 0, sid, rng.randrange(0, sid).to_bytes(4, "big") + b"\x10"))
            elif r < 0.9:
                out.append(frame(4, 1, 0))  # SETTINGS ACK
            elif r < 0.94:
                out.append(frame(rng.choice([0x10, 0xAB, 12]), rng.randrange(256),
                                 rng.randrange(4), rng.randbytes(rng.randrange(20))))
            else:
                out.append(frame(4, 0, 0, (4).to_bytes(2, "big") +
                                 rng.choice([0, 1000, 65535, 1 << 24]).to_bytes(4, "big")))
        return out


BAD_FIELDS = [(b"Upper", b"x"), (b"connection", b"close"), (b"te", b"gzip"), (b"x", b" lead"),
              (b"x", b"a\x00b"), (b"", b"v"), (b":status", b"200"), (b":custom", b"1"),
              (b"host", b"other.test"), (b"content-length", b"12x"), (b"a:b", b"c"),
              (b"transfer-encoding", b"chunked"), (b"x", b"tail\t")]


def mutate(rng: random.Random, client: Client, frames: list[bytes]) -> list[bytes]:
    frames = list(frames)
    for _ in range(rng.randrange(1, 4)):
        k = rng.randrange(1, len(frames))  # never the preface
        f = bytearray(frames[k])
        r = rng.random()
        if r < 0.15 and len(f) > 9:
            j = rng.randrange(9, len(f))
            f[j] ^= 1 << rng.randrange(8)
        elif r < 0.3:
            f[3] = rng.choice([0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11])  # type (GOAWAY: see above)
        elif r < 0.42:
            f[4] = rng.randrange(256)                      # flags
        elif r < 0.54:
            f[5:9] = rng.choice([0, 1, 2, 3, 5, 99, 1 << 31]).to_bytes(4, "big")
        elif r < 0.62:
            n = rng.choice([0, 1, 4, 5, 7, 8, 16385])
            f = bytearray(frame(f[3], f[4], int.from_bytes(f[5:9], "big") & 0x7FFFFFFF,
                                bytes(f[9:9 + n]).ljust(n, b"\0")))
        elif r < 0.7:
            frames.insert(k, frames[k])                    # duplicated
        elif r < 0.78:
            del frames[k]
            continue
        elif r < 0.9:
            sid = client.next_sid
            client.next_sid += 2
            fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                      (b":authority", b"h2.test")]
            fields.insert(rng.randrange(len(fields) + 1), rng.choice(BAD_FIELDS))
            if rng.random() < 0.3:
                del fields[rng.randrange(len(fields))]
            frames[k:k] = client.headers_frames(sid, fields, True)
            continue
        else:
            frames.insert(k, frame(0, 1, rng.choice([1, 2, 3, 101]), b"x" * rng.randrange(4)))
        frames[k] = bytes(f)
    return frames


OPTS = [Http2Options(), Http2Options(initial_stream_window_size=65535,
                                     initial_connection_window_size=65535,
                                     max_header_list_bytes=2000, hpack_table_size=256)]


def _chunks(rng: random.Random, data: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.choice([1, 7, 9, 100, 1000, 20000])
        out.append(data[i:i + n])
        i += n
    return out


@pytest.mark.parametrize("seed", range(150))
def test_valid_conversations_same_events_and_frames(seed):
    rng = random.Random(seed)
    opts = OPTS[seed % 2]
    data = b"".join(Client(rng, opts).conversation(rng.randrange(5, 40)))
    chunks = _chunks(rng, data) if seed % 3 else [data]
    fast, ref = engines(opts)
    got, want = run_engine(fast, chunks), run_engine(ref, chunks)
    assert [e for e in got[0] if e and e[0] == "error"] == [e for e in want[0] if e and e[0] == "error"]
    assert got == want


@pytest.mark.parametrize("seed", range(600))
def test_mutated_conversations_same_outcome(seed):
    """Fed in one piece: both report the same events, or the same connection error (then
    GOAWAY with its code, the events of that input dropped), and send the same frames."""
    rng = random.Random(10_000 + seed)
    opts = OPTS[seed % 2]
    client = Client(rng, opts)
    frames = mutate(rng, client, client.conversation(rng.randrange(3, 25)))
    data = b"".join(frames)
    fast, ref = engines(opts)
    got, want = run_engine(fast, [data]), run_engine(ref, [data])
    assert got == want


# -- the codec on each engine -------------------------------------------------------------------

class Transport:
    buffered_bytes = 0
    closed = False

    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self, flush: bool = True) -> None:
        self.closed = True


class Callbacks:
    """Records what the codec reports; answers complete requests from a seeded script."""

    def __init__(self) -> None:
        self.log: list = []
        self.complete: list[int] = []

    def on_stream_headers(self, sid, head, end):
        self.log.append(("headers", sid, head.method, head.target, head.headers, end))
        if end:
            self.complete.append(sid)

    def on_stream_data(self, sid, data, end):
        self.log.append(("data", sid, bytes(data), end))
        if end:
            self.complete.append(sid)

    def on_stream_trailers(self, sid, trailers):
        self.log.append(("trailers", sid, trailers))
        self.complete.append(sid)

    def on_stream_reset(self, sid, reason):
        self.log.append(("reset", sid, reason))

    def on_stream_watermark(self, sid, above):
        self.log.append(("watermark", sid, above))

    def on_codec_error(self, sid, error):
        self.log.append(("error", sid, error.details))


def run_codec(engine: str, opts: Http2Options, chunks: list[bytes], seed: int):
    rng = random.Random(seed)
    t, cb = Transport(), Callbacks()
    codec = Http2ServerCodec(t, cb, opts, ((b"server", b"ftproxy"),), None, engine)
    for chunk in chunks:
        codec.dispatch(chunk)
        while cb.complete:
            sid = cb.complete.pop(0)
            r = rng.random()
            if r < 0.1:
                codec.reset_stream(sid)
            elif r < 0.5:
                codec.encode_response(sid, 200, [(b"content-type", b"text/plain"),
                                                 (b"connection", b"x")], b"r" * rng.randrange(0, 70000))
            else:
                codec.encode_headers(sid, 201, [(b"x-a", b"1")], False)
                codec.encode_data(sid, b"s" * rng.randrange(0, 30000), False)
                if rng.random() < 0.5:
                    codec.encode_trailers(sid, [(b"grpc-status", b"0")])
                else:
                    codec.encode_data(sid, b"", True)
            if codec.stream_ended(sid):
                break
        if codec.dead:
            break
    return cb.log, frames_of(bytes(t.out)), codec.going_away


@pytest.mark.parametrize("seed", range(120))
def test_codec_on_both_engines_same_calls_and_frames(seed):
    """Responses (flow-controlled by the client's windows), resets, trailers: the HCM hears
    the same and the client gets the same frames from either engine."""
    rng = random.Random(20_000 + seed)
    opts = OPTS[seed % 2]
    client = Client(rng, opts)
    frames = client.conversation(rng.randrange(5, 30))
    if seed % 4 == 0:
        frames = mutate(rng, client, frames)
    data = b"".join(frames)
    chunks = _chunks(rng, data) if seed % 4 else [data]
    assert run_codec("fast", opts, chunks, seed) == run_codec("h2", opts, chunks, seed)


def test_the_preface_and_settings_are_the_same():
    for opts in OPTS:
        fast, ref = engines(opts)
        assert frames_of(fast().data_to_send()) == frames_of(ref().data_to_send())


def test_the_client_may_grow_the_hpack_table_to_the_advertised_size():
    """hpack_table_size above 4096: a client's size update up to it is taken (by both)."""
    opts = Http2Options(hpack_table_size=16384)
    enc = RefEncoder()
    enc.header_table_size = 16384
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
              (b":authority", b"h2.test"), (b"x-big", b"v" * 6000)]
    data = PREFACE + frame(4, 0, 0) + frame(1, 5, 1, enc.encode(fields)) + frame(1, 5, 3, enc.encode(fields))
    fast, ref = engines(opts)
    got, want = run_engine(fast, [data]), run_engine(ref, [data])
    assert got == want
    assert [e[1] for e in got[0][0] if e[0] == 0] == [1, 3]


def test_a_bad_preface_is_refused_without_goaway():
    for make in engines(OPTS[0]):
        eng = make()
        eng.data_to_send()
        with pytest.raises(H2ProtocolError):
            eng.receive_data(b"GET / HTTP/1.1\r\n\r\n")
        assert eng.data_to_send() == b""


FIELD_POOL = [(b":method", b"GET"), (b":method", b"CONNECT"), (b":method", b"POST"),
              (b":scheme", b"http"), (b":scheme", b""), (b":path", b"/"), (b":path", b""),
              (b":path", b"*"), (b":authority", b"h2.test"), (b":authority", b"other"),
              (b":protocol", b"websocket"), (b":status", b"200"), (b":bogus", b"x"),
              (b":", b"x"), (b"host", b"h2.test"), (b"host", b"other"), (b"te", b"trailers"),
              (b"te", b"TRAILERS"), (b"te", b"gzip"), (b"connection", b"keep-alive"),
              (b"keep-alive", b"1"), (b"proxy-connection", b"x"), (b"upgrade", b"h2c"),
              (b"transfer-encoding", b"chunked"), (b"content-length", b"0"),
              (b"content-length", b"5"), (b"content-length", b"+5"), (b"content-length", b""),
              (b"cookie", b"a=1"), (b"cookie", b""), (b"cookie", b" b=2"), (b"cookie", b"c=3 "),
              (b"x-ok", b"value"), (b"x-ok", b""), (b"x-sp", b" v"), (b"x-tab", b"v\t"),
              (b"x-nul", b"a\x00"), (b"x-cr", b"a\rb"), (b"x-lf", b"\n"), (b"X-Up", b"v"),
              (b"x sp", b"v"), (b"x:colon", b"v"), (b"", b"v"), (b"x-del\x7f", b"v"),
              (b"x-8bit\xc3\xa9", b"v"), (b"x-utf8", b"caf\xc3\xa9"), (b"x-mid", b"a b\tc")]


@pytest.mark.parametrize("seed", range(400))
def test_request_header_validation_equals_h2s(seed):
    """One request's header list, drawn from valid and invalid fields in any order: refused
    by both (the same connection error) or taken by both (the same event)."""
    rng = random.Random(30_000 + seed)
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
              (b":authority", b"h2.test")]
    for _ in range(rng.randrange(0, 4)):
        fields.insert(rng.randrange(len(fields) + 1), rng.choice(FIELD_POOL))
    if rng.random() < 0.3:
        del fields[rng.randrange(len(fields))]
    if rng.random() < 0.2:
        rng.shuffle(fields)
    end = rng.random() < 0.7
    enc = RefEncoder()
    data = PREFACE + frame(4, 0, 0) + frame(1, 4 | (1 if end else 0), 1, enc.encode(fields))
    if not end:
        data += frame(0, 1, 1, b"x" * rng.choice([0, 5]))
    fast, ref = engines(OPTS[0])
    assert run_engine(fast, [data]) == run_engine(ref, [data])


def test_a_client_goaway_lets_streams_in_flight_finish():
    """Deliberate difference from h2: after the client's GOAWAY our engine still answers the
    streams it opened (RFC 9113 §6.8) and the codec refuses new ones; h2 refuses every later
    frame and sends nothing more (its reference engine then drops the sends quietly)."""
    enc = RefEncoder()
    req = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]
    t, cb = Transport(), Callbacks()
    codec = Http2ServerCodec(t, cb, Http2Options(), (), None, "fast")
    codec.dispatch(PREFACE + frame(4, 0, 0) + frame(1, 5, 1, enc.encode(req)) +
                   frame(7, 0, 0, (0).to_bytes(4, "big") + (0).to_bytes(4, "big")))
    assert codec.going_away and [e[:2] for e in cb.log] == [("headers", 1)]
    codec.encode_response(1, 200, [], b"late but whole")
    codec.stream_ended(1)
    codec.dispatch(frame(1, 5, 3, enc.encode(req)))
    out = frames_of(bytes(t.out))
    assert ("HEADERS", 1, 0, [(b":status", b"200")]) in out
    assert (0, 1, 1, b"late but whole") in out
    assert (3, 0, 3, (7).to_bytes(4, "big")) in out      # REFUSED_STREAM
    t2, cb2 = Transport(), Callbacks()
    ref = Http2ServerCodec(t2, cb2, Http2Options(), (), None, "h2")
    ref.dispatch(PREFACE + frame(4, 0, 0) + frame(1, 5, 1, enc.encode(req)) +
                 frame(7, 0, 0, (0).to_bytes(4, "big") + (0).to_bytes(4, "big")))
    ref.encode_response(1, 200, [], b"dropped")          # does not raise
    assert not any(f[0] == 0 for f in frames_of(bytes(t2.out)))
