"""The `h2` library behind the interface of http2_frames.ServerConnection: the reference
engine of Http2ServerCodec (chosen with FTPROXY_H2_CODEC=h2), as h11 is for HTTP/1.1.
h2's events become http2_frames' event tuples and its ProtocolError an H2ProtocolError, so
the codec above cannot tell the engines apart; tests/unit/test_h2_frames_differential.py
drives both with the same bytes and compares what they say and send.

Thread affinity: one connection's. Must not: do I/O.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (ConnectionTerminated, DataReceived, PingAckReceived, PriorityUpdated,
                       RequestReceived, StreamReset, TrailersReceived, WindowUpdated)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from h2.stream import StreamState

from .hpack_codec import install as install_hpack
from .http2_frames import (EV_DATA, EV_GOAWAY, EV_PING_ACK, EV_PRIORITY, EV_REQUEST, EV_RESET,
                           EV_TRAILERS, EV_WINDOW, H2ProtocolError)

__all__ = ["H2Engine"]


def _code(e: ProtocolError) -> int:
    return int(getattr(e, "error_code", 1) or 1)


class H2Engine:
    def __init__(self, initial_stream_window: int = 65535,
                 initial_connection_window: int = 65535, max_header_list_size: int = 65536,
                 header_table_size: int = 4096, enable_connect_protocol: bool = False) -> None:
        conn = self.conn = H2Connection(H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=True,
            validate_outbound_headers=False, normalize_outbound_headers=False))
        settings = {
            SettingCodes.MAX_CONCURRENT_STREAMS: 2 ** 31 - 1,  # enforced by the codec
            SettingCodes.INITIAL_WINDOW_SIZE: min(initial_stream_window, 2 ** 31 - 1),
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
            SettingCodes.HEADER_TABLE_SIZE: header_table_size,
        }
        if enable_connect_protocol:
            settings[SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1  # RFC 8441 §3
        conn.local_settings = conn.local_settings.__class__(client=False, initial_values=settings)
        conn.decoder.max_header_list_size = max_header_list_size
        install_hpack(conn)
        # h2 never applies its initial HEADER_TABLE_SIZE to its decoder: the client may grow
        # the table to what we advertised (never below HPACK's default, as ours).
        conn.decoder.max_allowed_table_size = max(4096, header_table_size)
        conn.initiate_connection()
        extra = initial_connection_window - 65535
        if extra > 0:
            conn.increment_flow_control_window(min(extra, 2 ** 31 - 1 - 65535))

    @property
    def highest_inbound_stream_id(self) -> int:
        return self.conn.highest_inbound_stream_id

    @property
    def max_outbound_frame_size(self) -> int:
        return self.conn.max_outbound_frame_size

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()

    def receive_data(self, data: bytes) -> list:
        try:
            h2_events = self.conn.receive_data(data)
        except ProtocolError as e:
            raise H2ProtocolError(_code(e), str(e)) from e
        events: list = []
        append = events.append
        for ev in h2_events:
            cls = type(ev)
            if cls is DataReceived:
                append((EV_DATA, ev.stream_id, ev.data, ev.flow_controlled_length,
                        ev.stream_ended is not None))
            elif cls is RequestReceived:
                append((EV_REQUEST, ev.stream_id, list(ev.headers), ev.stream_ended is not None))
            elif cls is TrailersReceived:
                append((EV_TRAILERS, ev.stream_id, list(ev.headers)))
            elif cls is StreamReset:
                append((EV_RESET, ev.stream_id, int(ev.error_code), bool(ev.remote_reset)))
            elif cls is WindowUpdated:
                append((EV_WINDOW, ev.stream_id))
            elif cls is PriorityUpdated:
                append((EV_PRIORITY, ev.stream_id))
            elif cls is ConnectionTerminated:
                append((EV_GOAWAY, int(ev.error_code), ev.last_stream_id))
            elif cls is PingAckReceived:
                append((EV_PING_ACK, ev.ping_data))
        return events

    def _sendable(self, sid: int) -> bool:
        """The stream may still send: h2 has already applied every frame of the input whose
        events the codec is still going through (a later RST_STREAM may have closed it)."""
        stream = self.conn.streams.get(sid)
        return stream is not None and not stream.closed and stream.state_machine.state not in \
            (StreamState.HALF_CLOSED_LOCAL,)

    def local_flow_control_window(self, sid: int) -> int:
        if not self._sendable(sid):
            return 0
        return self.conn.local_flow_control_window(sid)

    # Sends on a stream h2 will not send on (closed meanwhile, or every stream once the
    # client's GOAWAY closed h2's connection state) send nothing, as ours.
    def send_headers(self, sid: int, headers, end_stream: bool = False) -> None:
        if self._sendable(sid):
            self._quiet(self.conn.send_headers, sid, headers, end_stream)

    def send_data(self, sid: int, data: bytes, end_stream: bool = False) -> None:
        if self._sendable(sid):
            self._quiet(self.conn.send_data, sid, data, end_stream)

    def end_stream(self, sid: int) -> None:
        if self._sendable(sid):
            self._quiet(self.conn.end_stream, sid)

    @staticmethod
    def _quiet(fn, *args) -> None:
        try:
            fn(*args)
        except ProtocolError:
            pass

    def reset_stream(self, sid: int, code: int) -> None:
        self._call(self.conn.reset_stream, sid, code)

    def acknowledge_received_data(self, n: int, sid: int) -> None:
        self.conn.acknowledge_received_data(n, sid)

    def ping(self, payload: bytes) -> None:
        self.conn.ping(payload)

    def close_connection(self, code: int) -> None:
        self.conn.close_connection(code)

    def goaway_frame(self, code: int) -> bytes:
        from hyperframe.frame import GoAwayFrame
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.conn.highest_inbound_stream_id
        frame.error_code = code
        return frame.serialize()

    @staticmethod
    def _call(fn, *args) -> None:
        try:
            fn(*args)
        except ProtocolError as e:
            raise H2ProtocolError(_code(e), str(e)) from e
