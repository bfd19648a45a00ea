"""The gRPC access loggers' hand encoder (proxy/access_log/grpc_log_entry.py), decoded with the
xds-protos generated classes (an independent implementation), and their config's errors."""

from __future__ import annotations

import pytest

import proxy.xds.proto  # noqa: F401  first: selects protobuf's pure-Python backend on 3.14t
from envoy.data.accesslog.v3 import accesslog_pb2
from google.protobuf import json_format

from proxy.access_log.config import parse_access_logs
from proxy.access_log.grpc_config import GrpcAccessLogConfig
from proxy.access_log.grpc_log_entry import (RESPONSE_FLAG_FIELDS, encode_http_entry,
                                             encode_tcp_entry)
from proxy.access_log.stream_info import StreamInfo
from proxy.config.reader import ConfigError, all_errors
from proxy.http.headers import Headers, RequestHead, ResponseHead

# Envoy's short flags and the ResponseFlags field each sets (grpc_access_log_utils.cc).
LONG_NAMES = {
    "LH": "failed_local_healthcheck", "UH": "no_healthy_upstream", "UT": "upstream_request_timeout",
    "LR": "local_reset", "UR": "upstream_remote_reset", "UF": "upstream_connection_failure",
    "UC": "upstream_connection_termination", "UO": "upstream_overflow", "NR": "no_route_found",
    "DI": "delay_injected", "FI": "fault_injected", "RL": "rate_limited",
    "RLSE": "rate_limit_service_error", "DC": "downstream_connection_termination",
    "URX": "upstream_retry_limit_exceeded", "SI": "stream_idle_timeout",
    "IH": "invalid_envoy_request_headers", "DPE": "downstream_protocol_error",
    "UMSDR": "upstream_max_stream_duration_reached", "RFCF": "response_from_cache_filter",
    "NFCF": "no_filter_config_found", "DT": "duration_timeout", "UPE": "upstream_protocol_error",
    "NC": "no_cluster_found", "OM": "overload_manager", "DF": "dns_resolution_failure",
    "DR": "downstream_remote_reset",
}


def _http_info(**extra) -> StreamInfo:
    info = StreamInfo(start_time=1_700_000_000.25, start_monotonic=100.0)
    info.request_headers = RequestHead(b"POST", b"/a?b=1", b"app.local", b"https", Headers([
        (b"host", b"app.local"), (b"user-agent", b"ua"), (b"referer", b"http://r/"),
        (b"x-forwarded-for", b"10.0.0.1"), (b"x-request-id", b"rid"),
        (b"x-envoy-original-path", b"/orig"), (b"x-multi", b"1"), (b"x-multi", b"2")]))
    info.response_headers = ResponseHead(200, Headers([(b"content-type", b"text/plain"),
                                                       (b"content-length", b"5")]))
    info.response_trailers = ResponseHead(0, Headers([(b"grpc-status", b"0")]))
    info.response_code, info.response_code_details = 200, "via_upstream"
    info.protocol = "HTTP/2"
    info.bytes_received, info.bytes_sent = 3, 5
    info.request_complete_monotonic = 100.001
    info.first_upstream_tx_monotonic = 100.002
    info.first_upstream_rx_monotonic = 100.004
    info.response_start_monotonic = 100.005
    info.end_monotonic = 100.5
    info.downstream_remote_address = "[::1]:4000"
    info.downstream_direct_remote_address = "[::1]:4000"
    info.downstream_local_address = "127.0.0.1:80"
    info.upstream_host, info.upstream_cluster = "10.0.0.9:8080", "app"
    info.upstream_local_address = "10.0.0.1:5555"
    info.route_name = "r1"
    info.dynamic_metadata = {"ns": {"s": "v", "n": 1.5, "b": True, "l": [1, "x"], "o": {"k": None}}}
    for k, v in extra.items():
        setattr(info, k, v)
    return info


def _decode(cls, data: bytes) -> dict:
    msg = cls()
    msg.ParseFromString(data)
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def test_an_http_entry_carries_what_envoy_fills():
    entry = _decode(accesslog_pb2.HTTPAccessLogEntry, encode_http_entry(
        _http_info(), ("x-multi", "user-agent", ":path", "x-absent"), ("content-type",),
        ("grpc-status",)))
    common = entry.pop("common_properties")
    assert common == {
        "downstream_remote_address": {"socket_address": {"address": "::1", "port_value": 4000}},
        "downstream_direct_remote_address": {"socket_address": {"address": "::1", "port_value": 4000}},
        "downstream_local_address": {"socket_address": {"address": "127.0.0.1", "port_value": 80}},
        "start_time": "2023-11-14T22:13:20.250Z",
        "time_to_last_rx_byte": "0.001s", "time_to_first_upstream_tx_byte": "0.002s",
        "time_to_last_upstream_tx_byte": "0.002s", "time_to_first_upstream_rx_byte": "0.004s",
        "time_to_last_upstream_rx_byte": "0.500s", "time_to_first_downstream_tx_byte": "0.005s",
        "time_to_last_downstream_tx_byte": "0.500s", "duration": "0.500s",
        "upstream_remote_address": {"socket_address": {"address": "10.0.0.9", "port_value": 8080}},
        "upstream_local_address": {"socket_address": {"address": "10.0.0.1", "port_value": 5555}},
        "upstream_cluster": "app", "route_name": "r1", "upstream_request_attempt_count": 1,
        "stream_id": "rid", "access_log_type": "DownstreamEnd",
        "metadata": {"filter_metadata": {"ns": {"s": "v", "n": 1.5, "b": True, "l": [1.0, "x"],
                                                "o": {"k": None}}}},
    }
    assert entry == {
        "protocol_version": "HTTP2",
        "request": {"request_method": "POST", "scheme": "https", "authority": "app.local",
                    "path": "/a?b=1", "user_agent": "ua", "referer": "http://r/",
                    "forwarded_for": "10.0.0.1", "request_id": "rid", "original_path": "/orig",
                    # Envoy's byteSize: every name and value, the pseudo-headers, host once
                    "request_headers_bytes": str(sum(len(k) + len(v) for k, v in (
                        (":authority", "app.local"), (":path", "/a?b=1"), (":method", "POST"),
                        (":scheme", "https"), ("user-agent", "ua"), ("referer", "http://r/"),
                        ("x-forwarded-for", "10.0.0.1"), ("x-request-id", "rid"),
                        ("x-envoy-original-path", "/orig"), ("x-multi", "1"), ("x-multi", "2")))),
                    "request_body_bytes": "3",
                    "request_headers": {"x-multi": "1,2", "user-agent": "ua", ":path": "/a?b=1"}},
        "response": {"response_code": 200, "response_headers_bytes": str(7 + 3 + 12 + 10 + 14 + 1),
                     "response_body_bytes": "5", "response_headers": {"content-type": "text/plain"},
                     "response_trailers": {"grpc-status": "0"},
                     "response_code_details": "via_upstream"},
    }


@pytest.mark.parametrize("short", sorted(RESPONSE_FLAG_FIELDS))
def test_each_response_flag_sets_its_field(short):
    common = _decode(accesslog_pb2.HTTPAccessLogEntry, encode_http_entry(
        _http_info(response_flags=[short])))["common_properties"]
    assert common["response_flags"] == {LONG_NAMES[short]: True}


def test_the_flags_table_is_envoys():
    names = {f.name for f in accesslog_pb2.ResponseFlags.DESCRIPTOR.fields} - {"unauthorized_details"}
    assert set(LONG_NAMES.values()) == names
    assert {s: accesslog_pb2.ResponseFlags.DESCRIPTOR.fields_by_name[n].number
            for s, n in LONG_NAMES.items()} == RESPONSE_FLAG_FIELDS


def test_uaex_and_several_flags():
    common = _decode(accesslog_pb2.HTTPAccessLogEntry, encode_http_entry(
        _http_info(response_flags=["URX", "UF", "UAEX"])))["common_properties"]
    assert common["response_flags"] == {"upstream_retry_limit_exceeded": True,
                                        "upstream_connection_failure": True,
                                        "unauthorized_details": {"reason": "EXTERNAL_SERVICE"}}


def test_a_local_reply_without_upstream_and_its_failure_reason():
    info = _http_info(upstream_local_address=None, first_upstream_tx_monotonic=None,
                      first_upstream_rx_monotonic=None, response_flags=["UF"],
                      upstream_transport_failure_reason="delayed_connect_error: Connection refused",
                      response_code=503, response_code_details="upstream_reset", bytes_sent=0,
                      dynamic_metadata=None)
    info.response_headers = ResponseHead(503, Headers([(b"content-length", b"0")]))
    entry = _decode(accesslog_pb2.HTTPAccessLogEntry, encode_http_entry(info))
    common = entry["common_properties"]
    assert common["upstream_transport_failure_reason"] == "delayed connect error: Connection refused"
    assert "time_to_first_upstream_tx_byte" not in common
    assert "time_to_last_upstream_rx_byte" not in common
    assert "metadata" not in common
    # Envoy's local reply without a body has no content-length in its map: ":status" "503"
    assert entry["response"]["response_headers_bytes"] == "10"


def test_a_tcp_entry():
    info = StreamInfo(start_time=10.5, start_monotonic=1.0)
    info.end_monotonic = 3.25
    info.bytes_received, info.bytes_sent = 49, 282
    info.downstream_remote_address = info.downstream_direct_remote_address = "127.0.0.1:4000"
    info.downstream_local_address = "/tmp/sock"
    info.upstream_host, info.upstream_cluster = "127.0.0.1:9000", "app"
    info.upstream_local_address = "127.0.0.1:5000"
    entry = _decode(accesslog_pb2.TCPAccessLogEntry, encode_tcp_entry(info))
    common = entry["common_properties"]
    assert len(common.pop("stream_id")) == 36       # a UUID, as Envoy's
    assert common == {
        "downstream_remote_address": {"socket_address": {"address": "127.0.0.1", "port_value": 4000}},
        "downstream_direct_remote_address": {"socket_address": {"address": "127.0.0.1", "port_value": 4000}},
        "downstream_local_address": {"pipe": {"path": "/tmp/sock"}},
        "start_time": "1970-01-01T00:00:10.500Z", "duration": "2.250s",
        "upstream_remote_address": {"socket_address": {"address": "127.0.0.1", "port_value": 9000}},
        "upstream_local_address": {"socket_address": {"address": "127.0.0.1", "port_value": 5000}},
        "upstream_cluster": "app", "upstream_request_attempt_count": 1,
        "downstream_wire_bytes_sent": "282", "downstream_wire_bytes_received": "49",
        "upstream_wire_bytes_sent": "49", "upstream_wire_bytes_received": "282",
        "access_log_type": "TcpConnectionEnd"}
    assert entry["connection_properties"] == {"received_bytes": "49", "sent_bytes": "282"}


class _Tls:
    tls_version = "TLSv1.3"
    local_uri_sans = ("spiffe://local",)
    local_subject = "CN=proxy"
    peer_uri_sans = ()
    peer_subject = "CN=client"


def test_tls_properties_of_a_tls_connection():
    info = _http_info(downstream_ssl=_Tls(), requested_server_name="app.local")
    tls = _decode(accesslog_pb2.HTTPAccessLogEntry, encode_http_entry(info))["common_properties"]["tls_properties"]
    assert tls == {"tls_version": "TLSv1_3", "tls_sni_hostname": "app.local",
                   "local_certificate_properties": {"subject_alt_name": [{"uri": "spiffe://local"}],
                                                    "subject": "CN=proxy"},
                   "peer_certificate_properties": {"subject": "CN=client"}}


# -- config --------------------------------------------------------------------------------------
HTTP = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
TCP = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig"


def _parse(common: dict, kind: str = HTTP, **extra) -> GrpcAccessLogConfig:
    name = "envoy.access_loggers.http_grpc" if kind == HTTP else "envoy.access_loggers.tcp_grpc"
    (cfg,) = parse_access_logs([({"name": name, "typed_config": {
        "@type": kind, "common_config": common, **extra}}, "access_log[0]")])
    return cfg


def _common(**extra) -> dict:
    return {"log_name": "l", "grpc_service": {"envoy_grpc": {"cluster_name": "als"}}, **extra}


def test_defaults_and_values():
    cfg = _parse(_common(), additional_request_headers_to_log=["X-A"])
    s = cfg.stream
    assert (s.kind, s.log_name, s.cluster_name, s.authority, s.flush_interval,
            s.buffer_size_bytes) == ("http", "l", "als", "", 1.0, 16384)
    assert cfg.request_headers == ("x-a",)
    s = _parse(_common(buffer_flush_interval="0.25s", buffer_size_bytes={"value": 0},
                       grpc_service={"envoy_grpc": {"cluster_name": "als", "authority": "a.b"},
                                     "initial_metadata": [{"key": "k", "value": "v"}]}),
               kind=TCP).stream
    assert (s.kind, s.flush_interval, s.buffer_size_bytes, s.authority, s.initial_metadata) == (
        "tcp", 0.25, 0, "a.b", ((b"k", b"v"),))
    # equal common configs are the same stream (a shared key)
    assert _parse(_common()).stream == _parse(_common()).stream


@pytest.mark.parametrize("common,path", [
    (_common(filter_state_objects_to_log=["k"]), "common_config.filter_state_objects_to_log"),
    (_common(grpc_stream_retry_policy={"num_retries": 1}), "common_config.grpc_stream_retry_policy"),
    (_common(custom_tags=[{"tag": "t", "literal": {"value": "v"}}]), "common_config.custom_tags"),
    (_common(grpc_service={"google_grpc": {"target_uri": "x"}}), "common_config.grpc_service.google_grpc"),
    (_common(grpc_service={"envoy_grpc": {"cluster_name": "a", "retry_policy": {}}}),
     "common_config.grpc_service.envoy_grpc.retry_policy"),
    (_common(transport_api_version="V2"), "common_config.transport_api_version"),
    (_common(buffer_flush_interval="0s"), "common_config.buffer_flush_interval"),
    ({"log_name": "l"}, "common_config.grpc_service"),
    (_common(log_name=""), "common_config.log_name"),
    (_common(grpc_service={"envoy_grpc": {"cluster_name": "a"},
                           "initial_metadata": [{"key": "Bad Key", "value": "v"}]}),
     "common_config.grpc_service.initial_metadata[0].key"),
])
def test_config_errors_name_the_field(common, path):
    with pytest.raises(ConfigError) as e:
        _parse(common)
    assert any(err.path == f"access_log[0].typed_config.{path}" for err in all_errors(e.value)), str(e.value)


def test_a_grpc_logger_needs_the_servers_service():
    with pytest.raises(RuntimeError, match="GrpcAccessLogService"):
        _parse(_common()).create()


# -- the OpenTelemetry access logger -------------------------------------------------------------
OTEL = "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig"


def _otel(**cfg):
    (c,) = parse_access_logs([({"name": "envoy.access_loggers.open_telemetry", "typed_config": {
        "@type": OTEL, **cfg}}, "access_log[0]")])
    return c


def test_an_otel_record_renders_body_and_attributes_and_carries_the_span():
    from opentelemetry.proto.logs.v1 import logs_pb2
    from proxy.access_log.otel_log import encode_log_record

    class _Span:
        trace_id, id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"

    cfg = _otel(grpc_service={"envoy_grpc": {"cluster_name": "c"}}, body={"kvlist_value": {"values": [
        {"key": "m", "value": {"string_value": "%REQ(:METHOD)%"}},
        {"key": "a", "value": {"array_value": {"values": [{"string_value": "%RESPONSE_CODE%"}]}}}]}},
        attributes={"values": [{"key": "ua", "value": {"string_value": "%REQ(USER-AGENT)%"}}]})
    record = _decode(logs_pb2.LogRecord, encode_log_record(
        _http_info(active_span=_Span()), cfg.body, cfg.attributes))
    assert record == {
        "time_unix_nano": str(1_700_000_000_250_000_000),
        "body": {"kvlist_value": {"values": [
            {"key": "m", "value": {"string_value": "POST"}},
            {"key": "a", "value": {"array_value": {"values": [{"string_value": "200"}]}}}]}},
        "attributes": [{"key": "ua", "value": {"string_value": "ua"}}],
        "trace_id": "CvdlGRbNQ92ESOshHIAxnA==", "span_id": "t61rcWkgMzE="}


def test_otel_transport_and_sink_config():
    a = _otel(common_config=_common(buffer_flush_interval="2s"), stat_prefix="p",
              resource_attributes={"values": [{"key": "k", "value": {"int_value": "3"}}]})
    b = _otel(grpc_service={"envoy_grpc": {"cluster_name": "als"}}, log_name="l",
              buffer_flush_interval="2s", stat_prefix="p",
              resource_attributes={"values": [{"key": "k", "value": {"int_value": "3"}}]})
    assert a.stream == b.stream    # the same exporter either way
    assert (a.stream.flush_interval, a.stream.stat_prefix, a.stream.log_name) == (2.0, "p", "l")


@pytest.mark.parametrize("cfg,path,words", [
    ({}, "", "exactly one transport"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "c"}}, "common_config": _common()},
     "", "exactly one transport"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "c"}}, "http_service": {"x": 1}},
     ".http_service", "not supported"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "c"}}, "body": {"int_value": "1"}},
     ".body.int_value", "only string values"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "c"}},
      "attributes": {"values": [{"key": "k", "value": {"string_value": "%NOPE%"}}]}},
     ".attributes.values[0].value.string_value", ""),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "c"}}, "formatters": [{"name": "x"}]},
     ".formatters", "not supported"),
])
def test_otel_config_errors_name_the_field(cfg, path, words):
    with pytest.raises(ConfigError) as e:
        _otel(**cfg)
    errs = all_errors(e.value)
    assert any(err.path == f"access_log[0].typed_config{path}" and words in err.message
               for err in errs), [str(x) for x in errs]


def test_the_address_cache_gives_the_same_bytes():
    cache: dict = {}
    info = _http_info()
    first = encode_http_entry(info, cache=cache)
    assert cache and encode_http_entry(info, cache=cache) == first == encode_http_entry(info)
