"""codec/http2_client.py: a request head becomes HTTP/2 header fields as Envoy sends them, and
a response header block the router's ResponseHeaders; the client h2 connection keeps taking a
GOAWAY's remaining streams. Bytes in, bytes out; no sockets."""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, ResponseReceived, StreamEnded

from proxy.http.codec.events import ResponseHeaders
from proxy.http.codec.http2_client import (extended_connect_fields, new_client_connection,
                                           request_fields, response_headers, upgrade_response)
from proxy.http.headers import Headers, RequestHead


def _head(fields, method=b"GET", path=b"/p?q=1", authority=b"example.com"):
    return RequestHead(method, path, authority, b"http", Headers(list(fields)))


def test_request_pseudo_headers_first_and_connection_specific_ones_dropped():
    head = _head([(b"Host", b"example.com"), (b"Connection", b"keep-alive, X-Hop"),
                  (b"Keep-Alive", b"5"), (b"Proxy-Connection", b"x"), (b"Upgrade", b"h2c"),
                  (b"Transfer-Encoding", b"chunked"), (b"X-Hop", b"1"),
                  (b"TE", b"trailers, deflate"), (b"X-Custom", b"Yes")])
    assert request_fields(head) == [
        (b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"example.com"),
        (b":path", b"/p?q=1"), (b"te", b"trailers"), (b"x-custom", b"Yes")]


def test_te_other_than_trailers_is_dropped():
    assert (b"te", b"gzip") not in request_fields(_head([(b"te", b"gzip")]))
    assert [n for n, _ in request_fields(_head([(b"te", b"gzip")]))] == [
        b":method", b":scheme", b":authority", b":path"]


def test_response_header_block_becomes_response_headers_of_http2():
    ev = response_headers([(b":status", b"201"), (b"content-length", b"3"), (b"x-a", b"b")])
    assert (ev.status, ev.http_version, ev.content_length) == (201, b"2", 3)
    assert ev.headers == [(b"content-length", b"3"), (b"x-a", b"b")]


def test_an_upgrade_goes_as_extended_connect_and_its_200_comes_back_as_101():
    head = _head([(b"Host", b"example.com"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
                  (b"Content-Length", b"0"), (b"Sec-WebSocket-Key", b"k")], method=b"POST")
    # Envoy's transformUpgradeRequestFromH1toH2: the method is lost, :scheme and :path stay.
    assert extended_connect_fields(head, b"websocket") == [
        (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
        (b":authority", b"example.com"), (b":path", b"/p?q=1"), (b"sec-websocket-key", b"k")]
    ok = upgrade_response(ResponseHeaders(200, b"", b"2", [(b"x-a", b"1")], True, None, False),
                          b"websocket")
    assert (ok.status, ok.headers) == (101, [(b"x-a", b"1"), (b"upgrade", b"websocket"),
                                             (b"connection", b"upgrade")])
    no = ResponseHeaders(403, b"", b"2", [], True, 0, False)
    assert upgrade_response(no, b"websocket") is no


def test_client_takes_frames_of_streams_a_goaway_lets_finish():
    client = new_client_connection()
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    client.send_headers(1, request_fields(_head([])), end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert any(isinstance(e, RequestReceived) for e in events)
    client.receive_data(server.data_to_send())
    server.close_connection(last_stream_id=1)
    goaway = server.data_to_send()
    server.state_machine.state = server.state_machine.state.SERVER_OPEN  # (h2 would refuse)
    server.send_headers(1, [(b":status", b"200")])
    server.send_data(1, b"ok", end_stream=True)
    events = client.receive_data(goaway + server.data_to_send())
    kinds = [type(e) for e in events]
    assert ResponseReceived in kinds and DataReceived in kinds and StreamEnded in kinds
