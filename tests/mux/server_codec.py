"""The mux codec's server side: a ServerCodec (proxy/http/codec/protocol.py) that the
connection manager drives exactly as it drives HTTP/1.1, but with several streams open at once.

It has what HTTP/1.1 lacks: a stream reset ends one stream (RESET frame), go-away is a frame,
the connection goes on after a stream ends. It has no flow control of its own: a paused
stream is recorded (`read_disabled`) and the connection's reading paused as HTTP/1.1 does.
"""

from __future__ import annotations

from proxy.http.codec.events import RequestHeaders

from .frames import (DATA, DATA_END, GOAWAY, HEADERS, HEADERS_END, RESET, TRAILERS, FrameReader,
                     frame, header_block, parse_block)


class MuxServerCodec:
    protocol = "MUX"
    head_in_progress = False  # a frame carries a whole head
    holding = False           # nothing is held: streams run side by side

    def __init__(self, transport, callbacks) -> None:
        self.transport = transport
        self.callbacks = callbacks
        self.reader = FrameReader()
        self.read_disabled: list[tuple[int, bool]] = []
        self.resets_sent: list[int] = []
        self.continues: list[int] = []
        self.went_away = False

    # -- input --
    def dispatch(self, data: bytes) -> None:
        cb = self.callbacks
        for kind, sid, payload in self.reader.feed(data):
            if kind in (HEADERS, HEADERS_END):
                fields = parse_block(payload)
                pseudo = {n: v for n, v in fields if n.startswith(b":")}
                headers = [(b"host", pseudo.get(b":authority", b""))]
                headers += [(n, v) for n, v in fields if not n.startswith(b":")]
                expect = (b"expect", b"100-continue") in headers
                ev = RequestHeaders(pseudo[b":method"], pseudo[b":path"], b"1.1", headers, True,
                                    None, expect, None, False)
                cb.on_stream_headers(sid, ev, kind == HEADERS_END)
            elif kind in (DATA, DATA_END):
                cb.on_stream_data(sid, payload, kind == DATA_END)
            elif kind == TRAILERS:
                cb.on_stream_trailers(sid, parse_block(payload))
            elif kind == RESET:
                cb.on_stream_reset(sid, payload.decode())

    def resume(self) -> None:
        pass

    # -- output --
    def _write(self, kind: bytes, sid: int, payload: bytes = b"") -> None:
        self.transport.write(frame(kind, sid, payload))

    def encode_continue(self, stream_id: int) -> None:
        self.continues.append(stream_id)
        self._write(HEADERS, stream_id, header_block([(b":status", b"100")]))

    def encode_headers(self, stream_id: int, status: int, headers, end_stream: bool) -> None:
        block = header_block([(b":status", b"%d" % status)] + list(headers))
        self._write(HEADERS_END if end_stream else HEADERS, stream_id, block)

    def encode_response(self, stream_id: int, status: int, headers, body: bytes) -> None:
        self.encode_headers(stream_id, status, headers, False)
        self._write(DATA_END, stream_id, body)

    def encode_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self._write(DATA_END if end_stream else DATA, stream_id, data)

    def encode_trailers(self, stream_id: int, trailers) -> None:
        self._write(TRAILERS, stream_id, header_block(trailers or []))

    # -- control --
    def reset_stream(self, stream_id: int) -> bool:
        self.resets_sent.append(stream_id)
        self._write(RESET, stream_id, b"reset by proxy")
        return True

    def go_away(self) -> None:
        if not self.went_away:
            self.went_away = True
            self._write(GOAWAY, 0)

    def abandon_request(self, stream_id: int) -> None:
        pass  # the stream's RESET after its response says the rest is not wanted

    def read_disable_stream(self, stream_id: int, disable: bool) -> None:
        self.read_disabled.append((stream_id, disable))
        self.transport.read_disable(disable)

    def stream_ended(self, stream_id: int) -> bool:
        return False  # the connection goes on


def mux_codec_factory(made: list | None = None):
    """A ServerCodecFactory that speaks mux on every connection (`made` collects the codecs)."""
    def factory(first_bytes, transport, callbacks):
        codec = MuxServerCodec(transport, callbacks)
        if made is not None:
            made.append(codec)
        return codec
    return factory
