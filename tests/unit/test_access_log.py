"""Access logging: format operators, default format, json_format typing, config errors, sinks."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from proxy.access_log import (DEFAULT_FORMAT, FileSink, SinkRegistry, StreamInfo, compile_format,
                              compile_json_format, parse_access_logs)
from proxy.access_log.config import FILE_LOGGER, STDERR_LOGGER, STDOUT_LOGGER
from proxy.config.reader import ConfigError
from proxy.http.headers import Headers, RequestHead, ResponseHead

START = 1764108866.123  # 2025-11-25T22:14:26.123Z


def make_info() -> StreamInfo:
    info = StreamInfo(start_time=START, start_monotonic=100.0)
    info.request_complete_monotonic = 100.0021
    info.first_upstream_tx_monotonic = 100.003
    info.first_upstream_rx_monotonic = 100.0105
    info.response_start_monotonic = 100.011
    info.end_monotonic = 100.0429
    info.request_headers = RequestHead(
        b"GET", b"/api/v1?q=1", b"example.com", b"https",
        Headers([(b"user-agent", b"curl/8.5.0"), (b"x-forwarded-for", b"10.1.2.3"),
                 (b"x-request-id", b"abc-123"), (b"x-long", b"abcdefghij")]))
    info.response_headers = ResponseHead(200, Headers([(b"x-envoy-upstream-service-time", b"7"),
                                                       (b"content-type", b"text/plain")]))
    info.response_trailers = Headers([(b"grpc-status", b"0")])
    info.response_code = 200
    info.response_code_details = "via_upstream"
    info.bytes_received = 12
    info.bytes_sent = 345
    info.protocol = "HTTP/1.1"
    info.upstream_host = "10.0.0.5:8080"
    info.upstream_cluster = "backend"
    info.upstream_local_address = "10.0.0.1:40000"
    info.downstream_remote_address = "192.168.1.9:51000"
    info.downstream_local_address = "[::1]:10000"
    info.downstream_direct_remote_address = "192.168.1.8:51001"
    info.route_name = "main_route"
    info.requested_server_name = "example.com"
    info.upstream_transport_failure_reason = "TLS_error"
    info.downstream_transport_failure_reason = "connection reset"
    info.filter_chain_name = "chain_a"
    info.connection_id = 42
    info.upstream_request_attempt_count = 2
    return info


def fmt(text: str, info: StreamInfo | None = None, **kw) -> str:
    return compile_format(text, "fmt", hostname="testhost", **kw).format(info or make_info())


# -- default format ------------------------------------------------------------------------------
def test_default_format_line_is_envoys():
    assert fmt(DEFAULT_FORMAT) == (
        '[2025-11-25T22:14:26.123Z] "GET /api/v1?q=1 HTTP/1.1" 200 - 12 345 42 7 '
        '"10.1.2.3" "curl/8.5.0" "abc-123" "example.com" "10.0.0.5:8080"\n')


def test_default_format_prefers_x_envoy_original_path():
    info = make_info()
    info.request_headers.headers.add(b"x-envoy-original-path", b"/original")
    assert '"GET /original HTTP/1.1"' in fmt(DEFAULT_FORMAT, info)


def test_default_format_with_nothing_set_renders_dashes_and_zeros():
    assert fmt(DEFAULT_FORMAT, StreamInfo()) == '[-] "- - -" 0 - 0 0 - - "-" "-" "-" "-" "-"\n'


# -- every operator ------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("%START_TIME%", "2025-11-25T22:14:26.123Z"),
    ("%REQ(:METHOD)%", "GET"),
    ("%REQ(:PATH)%", "/api/v1?q=1"),
    ("%REQ(:AUTHORITY)%", "example.com"),
    ("%REQ(:SCHEME)%", "https"),
    ("%REQ(User-Agent)%", "curl/8.5.0"),
    ("%REQUEST_HEADER(X-REQUEST-ID)%", "abc-123"),
    ("%REQ(X-MISSING?X-REQUEST-ID)%", "abc-123"),
    ("%REQ(X-LONG):4%", "abcd"),
    ("%REQ(X-MISSING)%", "-"),
    ("%RESP(CONTENT-TYPE)%", "text/plain"),
    ("%RESPONSE_HEADER(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "7"),
    ("%RESP(X-MISSING?CONTENT-TYPE):4%", "text"),
    ("%TRAILER(GRPC-STATUS)%", "0"),
    ("%RESPONSE_TRAILER(GRPC-MESSAGE)%", "-"),
    ("%RESPONSE_CODE%", "200"),
    ("%RESPONSE_CODE_DETAILS%", "via_upstream"),
    ("%RESPONSE_FLAGS%", "-"),
    ("%BYTES_RECEIVED%", "12"),
    ("%BYTES_SENT%", "345"),
    ("%DURATION%", "42"),
    ("%REQUEST_DURATION%", "2"),
    ("%RESPONSE_DURATION%", "10"),
    ("%RESPONSE_TX_DURATION%", "32"),
    ("%PROTOCOL%", "HTTP/1.1"),
    ("%UPSTREAM_HOST%", "10.0.0.5:8080"),
    ("%UPSTREAM_CLUSTER%", "backend"),
    ("%UPSTREAM_LOCAL_ADDRESS%", "10.0.0.1:40000"),
    ("%UPSTREAM_TRANSPORT_FAILURE_REASON%", "TLS_error"),
    ("%DOWNSTREAM_REMOTE_ADDRESS%", "192.168.1.9:51000"),
    ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "192.168.1.9"),
    ("%DOWNSTREAM_LOCAL_ADDRESS%", "[::1]:10000"),
    ("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "::1"),
    ("%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%", "192.168.1.8:51001"),
    ("%REQUESTED_SERVER_NAME%", "example.com"),
    ("%ROUTE_NAME%", "main_route"),
    ("%FILTER_CHAIN_NAME%", "chain_a"),
    ("%DOWNSTREAM_TRANSPORT_FAILURE_REASON%", "connection_reset"),   # spaces as "_", as Envoy
    ("%CONNECTION_ID%", "42"),
    ("%HOSTNAME%", "testhost"),
    ("%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "2"),
])
def test_operator_renders_stream_info_value(text, expected):
    assert fmt(text) == expected


@pytest.mark.parametrize("text", [
    "%START_TIME%", "%RESPONSE_CODE_DETAILS%", "%DURATION%", "%REQUEST_DURATION%",
    "%RESPONSE_DURATION%", "%PROTOCOL%", "%UPSTREAM_HOST%", "%UPSTREAM_CLUSTER%",
    "%UPSTREAM_LOCAL_ADDRESS%", "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "%DOWNSTREAM_REMOTE_ADDRESS%", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "%DOWNSTREAM_LOCAL_ADDRESS%", "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
    "%REQUESTED_SERVER_NAME%", "%ROUTE_NAME%", "%REQ(:METHOD)%", "%RESP(X)%", "%TRAILER(X)%",
    "%RESPONSE_FLAGS%", "%FILTER_CHAIN_NAME%", "%DOWNSTREAM_TRANSPORT_FAILURE_REASON%",
])
def test_unset_value_renders_dash(text):
    assert fmt(text, StreamInfo()) == "-"


def test_unset_value_renders_empty_with_omit_empty_values():
    assert fmt("a=%PROTOCOL% b=%ROUTE_NAME%", StreamInfo(), omit_empty_values=True) == "a= b="


def test_unset_numeric_operators_render_zero():
    assert fmt("%RESPONSE_CODE% %BYTES_RECEIVED% %BYTES_SENT% %CONNECTION_ID% "
               "%UPSTREAM_REQUEST_ATTEMPT_COUNT%", StreamInfo()) == "0 0 0 0 0"


def test_response_flags_are_comma_joined_in_the_order_they_were_set():
    # Envoy 1.40 keeps them in a vector: a retry's URX before the UF that ended the retries.
    info = make_info()
    info.response_flags = ["URX", "UF", "UH"]
    assert fmt("%RESPONSE_FLAGS%", info) == "URX,UF,UH"


def test_double_percent_is_literal_percent():
    assert fmt("100%% %RESPONSE_CODE%%%") == "100% 200%"


def test_literal_text_around_operators_is_kept():
    assert fmt("code=%RESPONSE_CODE% [%PROTOCOL%] end\n") == "code=200 [HTTP/1.1] end\n"


def test_ipv4_and_plain_addresses_without_port():
    info = StreamInfo()
    info.downstream_remote_address = "[2001:db8::1]:443"
    info.downstream_local_address = "/tmp/pipe.sock"
    assert fmt("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%",
               info) == "2001:db8::1 /tmp/pipe.sock"


@pytest.mark.parametrize("spec,expected", [
    ("%s", "1764108866"),
    ("%3f", "123"),
    ("%6f", "123000"),
    ("%f", "123000000"),
    ("%1f", "1"),
    ("%Y/%m/%dT%H:%M:%S%z", "2025/11/25T22:14:26+0000"),
    ("%H:%M:%E3S", "22:14:26.123"),
    ("%s.%3f", "1764108866.123"),
    ("%%Y", "%Y"),
])
def test_start_time_with_format(spec, expected):
    assert fmt(f"%START_TIME({spec})%") == expected


def test_start_time_millis_are_truncated_not_rounded():
    info = StreamInfo(start_time=1764108866.9996)
    assert fmt("%START_TIME%", info) == "2025-11-25T22:14:26.999Z"


# -- compile errors --------------------------------------------------------------------------------
def test_unknown_operator_is_config_error_naming_path():
    with pytest.raises(ConfigError) as e:
        compile_format("%RESPONSE_COD%", "a.b.text_format")
    assert e.value.path == "a.b.text_format"
    assert "unknown command operator %RESPONSE_COD%" in str(e.value)
    assert "RESPONSE_CODE" in str(e.value)  # did-you-mean


@pytest.mark.parametrize("text", ["50% done", "%REQ(X%", "%lower%", "%"])
def test_bad_syntax_is_config_error(text):
    with pytest.raises(ConfigError, match="invalid command operator") as e:
        compile_format(text, "p")
    assert e.value.path == "p"


@pytest.mark.parametrize("text,msg", [
    ("%REQ%", "needs a header name"),
    ("%REQ(A?B?C)%", "more than one alternative"),
    ("%PROTOCOL(x)%", "takes no argument"),
    ("%CLUSTER_METADATA(ns:key)%", "not supported yet"),
    ("%DYNAMIC_METADATA%", "needs an argument"),
    ("%REQ(A):0%", "length must be greater than 0"),
])
def test_bad_operator_use_is_config_error(text, msg):
    with pytest.raises(ConfigError, match=msg):
        compile_format(text, "p")


# -- json_format -------------------------------------------------------------------------------------
def test_json_single_operator_keeps_its_type_and_unset_is_null():
    f = compile_json_format({"code": "%RESPONSE_CODE%", "bytes": "%BYTES_SENT%",
                             "dur": "%DURATION%", "method": "%REQ(:METHOD)%",
                             "route": "%ROUTE_NAME%", "flags": "%RESPONSE_FLAGS%"}, "j")
    info = make_info()
    info.route_name = None
    out = f.format(info)
    assert out.endswith("\n") and out.count("\n") == 1
    assert json.loads(out) == {"code": 200, "bytes": 345, "dur": 42, "method": "GET",
                               "route": None, "flags": "-"}


def test_json_string_with_text_or_several_operators_is_a_string():
    f = compile_json_format({"line": "%REQ(:METHOD)% %RESPONSE_CODE%", "code": "c=%RESPONSE_CODE%",
                             "miss": "%ROUTE_NAME%/%PROTOCOL%"}, "j")
    info = make_info()
    info.route_name = None
    assert json.loads(f.format(info)) == {"line": "GET 200", "code": "c=200", "miss": "-/HTTP/1.1"}


def test_json_nested_objects_lists_and_constants():
    f = compile_json_format({"req": {"m": "%REQ(:METHOD)%", "inner": {"p": "%REQ(:PATH)%"}},
                             "tags": ["%UPSTREAM_CLUSTER%", "static"], "n": 5, "ok": True,
                             "text": "plain"}, "j")
    assert json.loads(f.format(make_info())) == {
        "req": {"m": "GET", "inner": {"p": "/api/v1?q=1"}}, "tags": ["backend", "static"],
        "n": 5, "ok": True, "text": "plain"}


def test_json_keeps_config_key_order_unless_sorted():
    mapping = {"b": "%RESPONSE_CODE%", "a": "%PROTOCOL%"}
    assert compile_json_format(mapping, "j").format(make_info()) == '{"b":200,"a":"HTTP/1.1"}\n'
    assert (compile_json_format(mapping, "j", sort_properties=True).format(make_info())
            == '{"a":"HTTP/1.1","b":200}\n')


def test_json_omit_empty_values_drops_unset_keys():
    f = compile_json_format({"route": "%ROUTE_NAME%", "code": "%RESPONSE_CODE%",
                             "nested": {"p": "%PROTOCOL%"}}, "j", omit_empty_values=True)
    assert json.loads(f.format(StreamInfo())) == {"code": 0, "nested": {}}


def test_json_unknown_operator_names_the_key_path():
    with pytest.raises(ConfigError) as e:
        compile_json_format({"outer": {"bad": "%NOPE%"}}, "log_format.json_format")
    assert e.value.path == "log_format.json_format.outer.bad"


# -- config ----------------------------------------------------------------------------------------
FILE_URL = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_URL = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_URL = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"


def parse_one(typed_config: dict, name: str = "envoy.access_loggers.file"):
    (cfg,) = parse_access_logs([({"name": name, "typed_config": typed_config}, "hcm.access_log[0]")])
    return cfg


def test_file_logger_without_format_uses_default_format():
    cfg = parse_one({"@type": FILE_URL, "path": "/tmp/x.log"})
    assert (cfg.logger, cfg.target) == (FILE_LOGGER, "/tmp/x.log")
    assert cfg.log_format.source == DEFAULT_FORMAT


def test_file_logger_text_format_source_inline_string():
    cfg = parse_one({"@type": FILE_URL, "path": "/tmp/x.log",
                     "log_format": {"text_format_source": {"inline_string": "%RESPONSE_CODE%\n"}}})
    assert cfg.log_format.format(make_info()) == "200\n"


def test_file_logger_legacy_format_and_json_format():
    legacy = parse_one({"@type": FILE_URL, "path": "/tmp/x.log", "format": "%PROTOCOL%"})
    assert legacy.log_format.format(make_info()) == "HTTP/1.1"
    js = parse_one({"@type": FILE_URL, "path": "/tmp/x.log", "json_format": {"c": "%RESPONSE_CODE%"}})
    assert js.log_format.format(make_info()) == '{"c":200}\n'


def test_log_format_json_with_omit_empty_values():
    cfg = parse_one({"@type": STDOUT_URL, "log_format": {
        "json_format": {"r": "%ROUTE_NAME%", "c": "%RESPONSE_CODE%"}, "omit_empty_values": True}},
        name="envoy.access_loggers.stdout")
    assert (cfg.logger, cfg.target) == (STDOUT_LOGGER, "stdout")
    assert cfg.log_format.format(StreamInfo()) == '{"c":0}\n'


def test_stdout_and_stderr_by_name_only_use_default_format():
    out, err = parse_access_logs([({"name": "envoy.access_loggers.stdout"}, "a[0]"),
                                  ({"name": "envoy.access_loggers.stderr"}, "a[1]")])
    assert (out.target, err.target) == ("stdout", "stderr")
    assert err.logger == STDERR_LOGGER and err.log_format.source == DEFAULT_FORMAT


def test_equal_configs_compare_equal():
    a = parse_one({"@type": FILE_URL, "path": "/tmp/x.log", "format": "%PROTOCOL%"})
    b = parse_one({"@type": FILE_URL, "path": "/tmp/x.log", "format": "%PROTOCOL%"})
    assert a == b


@pytest.mark.parametrize("typed,path,msg", [
    ({"@type": FILE_URL, "path": "/x", "fromat": "x"}, "hcm.access_log[0].typed_config",
     'unknown field "fromat" (did you mean "format"?)'),
    ({"@type": FILE_URL}, "hcm.access_log[0].typed_config.path", "required"),
    ({"@type": FILE_URL, "path": "/x", "format": "%BAD_OP%"}, "hcm.access_log[0].typed_config.format",
     "unknown command operator"),
    ({"@type": FILE_URL, "path": "/x", "log_format": {"text_format_source": {"inline_string": "%X%"}}},
     "hcm.access_log[0].typed_config.log_format.text_format_source.inline_string", "unknown"),
    ({"@type": FILE_URL, "path": "/x", "log_format": {"json_format": {"a": {"b": "%Y%"}}}},
     "hcm.access_log[0].typed_config.log_format.json_format.a.b", "unknown"),
    ({"@type": FILE_URL, "path": "/x", "format": "a", "json_format": {}},
     "hcm.access_log[0].typed_config", "only one of"),
    ({"@type": FILE_URL, "path": "/x", "log_format": {}},
     "hcm.access_log[0].typed_config.log_format", "one of text_format"),
    ({"@type": FILE_URL, "path": "/x", "log_format": {"text_format_source": {"filename": "/f"}}},
     "hcm.access_log[0].typed_config.log_format.text_format_source.filename", "not supported"),
    ({"@type": STDOUT_URL, "path": "/x"}, "hcm.access_log[0].typed_config", 'unknown field "path"'),
])
def test_config_errors_name_the_path(typed, path, msg):
    with pytest.raises(ConfigError) as e:
        parse_one(typed)
    assert e.value.path == path
    assert msg in e.value.message


def test_an_access_log_filter_error_names_its_path():
    item = {"name": "envoy.access_loggers.stdout", "filter": {"status_code_filter": {}}}
    with pytest.raises(ConfigError) as e:
        parse_access_logs([(item, "listeners[0].access_log[2]")])
    assert e.value.path == "listeners[0].access_log[2].filter.status_code_filter.comparison"
    assert e.value.message == "required field is missing"
    item = {"name": "envoy.access_loggers.stdout", "filter": {"metadata_filter": {"matcher": {
        "filter": "ns", "path": [], "value": {"present_match": True}}}}}
    with pytest.raises(ConfigError) as e:
        parse_access_logs([(item, "listeners[0].access_log[2]")])
    assert e.value.path == "listeners[0].access_log[2].filter.metadata_filter.matcher.path"
    assert e.value.message == "must have at least 1 item(s)"


def test_unknown_logger_name_is_refused():
    with pytest.raises(ConfigError) as e:
        parse_access_logs([({"name": "envoy.access_loggers.nope"}, "a[0]")])
    assert e.value.path == "a[0].name"


# -- loggers and sinks --------------------------------------------------------------------------
def read(path) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def test_file_logger_writes_formatted_line(tmp_path):
    target = tmp_path / "access.log"
    cfg = parse_one({"@type": FILE_URL, "path": str(target)})
    registry = SinkRegistry()
    logger = cfg.create(registry)
    logger.log(make_info())
    logger.close()
    assert read(target) == fmt(DEFAULT_FORMAT)
    assert len(registry) == 0


def test_stdout_logger_writes_to_stdout(capsys):
    cfg = parse_access_logs([({"name": "envoy.access_loggers.stdout", "typed_config": {
        "@type": STDOUT_URL, "log_format": {"text_format": "%RESPONSE_CODE%\n"}}}, "a[0]")])[0]
    registry = SinkRegistry()
    logger = cfg.create(registry)
    logger.log(make_info())
    registry.close_all()
    assert capsys.readouterr().out == "200\n"


def test_loggers_for_same_path_share_one_sink_until_last_release(tmp_path):
    registry = SinkRegistry()
    cfg = parse_one({"@type": FILE_URL, "path": str(tmp_path / "a.log"), "format": "%PROTOCOL%\n"})
    one, two = cfg.create(registry), cfg.create(registry)
    assert one._sink is two._sink
    sink = one._sink
    one.close()
    assert not sink.closed
    two.log(make_info())
    two.close()
    assert sink.closed
    assert read(tmp_path / "a.log") == "HTTP/1.1\n"


def test_file_sink_lines_from_four_threads_never_interleave(tmp_path):
    target = tmp_path / "mt.log"
    sink = FileSink(str(target), flush_interval=0.01)
    per_thread, threads = 2000, []

    def worker(tid: int) -> None:
        body = chr(ord("a") + tid) * (50 + 37 * tid)
        for n in range(per_thread):
            sink.write(f"{tid}:{n}:{body}\n")

    for tid in range(4):
        threads.append(threading.Thread(target=worker, args=(tid,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    lines = read(target).splitlines()
    assert len(lines) == 4 * per_thread
    seen: dict[int, list[int]] = {0: [], 1: [], 2: [], 3: []}
    for line in lines:
        tid_s, n_s, body = line.split(":")
        tid = int(tid_s)
        assert body == chr(ord("a") + tid) * (50 + 37 * tid)
        seen[tid].append(int(n_s))
    for tid in range(4):
        assert seen[tid] == list(range(per_thread))  # each thread's lines in order


def test_file_sink_flushes_on_timer_without_close(tmp_path):
    target = tmp_path / "timer.log"
    sink = FileSink(str(target), flush_interval=0.02)
    try:
        sink.write("hello\n")
        deadline = time.monotonic() + 5
        while read(target) != "hello\n" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read(target) == "hello\n"
    finally:
        sink.close()


def test_file_sink_buffers_until_flush(tmp_path):
    target = tmp_path / "buf.log"
    sink = FileSink(str(target), flush_interval=60)
    try:
        sink.write("one\n")
        assert read(target) == ""
        sink.flush()
        assert read(target) == "one\n"
    finally:
        sink.close()


def test_file_sink_appends_to_existing_file(tmp_path):
    target = tmp_path / "app.log"
    target.write_text("old\n")
    sink = FileSink(str(target))
    sink.write("new\n")
    sink.close()
    assert read(target) == "old\nnew\n"


def test_file_sink_reopen_writes_to_new_file_after_rotation(tmp_path):
    target = tmp_path / "rot.log"
    sink = FileSink(str(target), flush_interval=60)
    sink.write("before\n")
    sink.flush()
    os.rename(target, tmp_path / "rot.log.1")
    sink.reopen()
    sink.write("after\n")
    sink.close()
    assert read(tmp_path / "rot.log.1") == "before\n"
    assert read(target) == "after\n"


def test_file_sink_drops_and_counts_lines_past_pending_bound(tmp_path):
    sink = FileSink(str(tmp_path / "cap.log"), flush_interval=60, max_pending_bytes=10)
    try:
        sink.write("12345\n")
        sink.write("67890\n")
        assert sink.dropped_lines == 1
    finally:
        sink.close()
    assert read(tmp_path / "cap.log") == "12345\n"


def test_json_without_orjson_gives_the_same_line(monkeypatch):
    from proxy.access_log import formatter
    mapping = {"b": "%RESPONSE_CODE%", "a": {"m": "%REQ(:METHOD)%", "r": "%ROUTE_NAME%"}, "u": "é"}
    info = make_info()
    info.route_name = None
    fast = compile_json_format(mapping, "j").format(info)
    monkeypatch.setattr(formatter, "_orjson", None)
    assert compile_json_format(mapping, "j").format(info) == fast


def test_start_time_memo_follows_changing_seconds():
    f = compile_format("%START_TIME%", "p")
    times = [START, START + 1, START, START + 86400.5]
    out = []
    for t in times:
        out.append(f.format(StreamInfo(start_time=t)))
    assert out == ["2025-11-25T22:14:26.123Z", "2025-11-25T22:14:27.123Z",
                   "2025-11-25T22:14:26.123Z", "2025-11-26T22:14:26.623Z"]


def test_braces_in_literal_text_are_kept():
    assert fmt('{"code": %RESPONSE_CODE%, "x": "{}"}') == '{"code": 200, "x": "{}"}'
