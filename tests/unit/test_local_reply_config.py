"""The HCM's local_reply_config: parsing (errors name the field) and the rewrite of one reply,
without sockets (the behaviour against real Envoy: tests/differential/cases/local_reply_config.yaml)."""

from __future__ import annotations

import pytest

import proxy.extensions  # noqa: F401  fills the registry
from proxy.access_log.stream_info import StreamInfo
from proxy.config.reader import ConfigError
from proxy.http.hcm_config import parse_hcm
from proxy.http.headers import Headers, RequestHead
from proxy.http.local_reply import grpc_message
from proxy.http.local_reply_config import parse_local_reply_config

P = "lrc"
ROUTES = {"virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [
    {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]}


def _status(code: int, op: str = "EQ") -> dict:
    return {"status_code_filter": {"comparison": {"op": op, "value": {"default_value": code,
                                                                        "runtime_key": "k"}}}}


def _err(raw) -> str:
    with pytest.raises(ConfigError) as e:
        parse_local_reply_config(raw, P)
    return str(e.value)


def _stream(path: bytes = b"/x", method: bytes = b"GET", **headers: str) -> StreamInfo:
    info = StreamInfo()
    items = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    info.request_headers = RequestHead(method, path, b"example.com", b"http", Headers(items))
    info.response_code_details = "route_not_found"
    return info


def _prepare(raw, status=404, body=b"", extra=None, grpc=False, stream=None, head=False):
    cfg = parse_local_reply_config(raw, P)
    stream = stream or _stream()
    h, b = cfg.prepare(stream, status, body, extra, grpc, None, head)
    return h.status, dict(h.headers.items()), b, stream


# -- parsing ---------------------------------------------------------------------------------

def test_hcm_takes_local_reply_config_and_leaves_it_none_when_unset():
    raw = {"stat_prefix": "s", "route_config": ROUTES,
           "http_filters": [{"name": "envoy.filters.http.router"}]}
    assert parse_hcm(raw, "hcm").local_reply is None
    raw["local_reply_config"] = {"mappers": [{"filter": _status(404), "status_code": 410}]}
    cfg = parse_hcm(raw, "hcm").local_reply
    assert cfg.mappers[0].status_code == 410 and cfg.body_format is None


def test_mapper_without_filter_is_refused_by_path():
    assert "lrc.mappers[0].filter" in _err({"mappers": [{"status_code": 410}]})


def test_mapper_status_code_outside_200_600_is_refused():
    msg = _err({"mappers": [{"filter": _status(404), "status_code": 600}]})
    assert "lrc.mappers[0].status_code" in msg and "[200, 600)" in msg
    assert "status_code" in _err({"mappers": [{"filter": _status(404), "status_code": 199}]})


def test_unknown_operator_in_body_format_names_the_field():
    msg = _err({"body_format": {"text_format": "%NOPE%"}})
    assert "lrc.body_format.text_format" in msg and "%NOPE%" in msg


def test_local_reply_body_operator_is_for_local_replies_only():
    parse_local_reply_config({"body_format": {"text_format": "%LOCAL_REPLY_BODY%"}}, P)
    from proxy.access_log.config import parse_log_format
    with pytest.raises(ConfigError):
        parse_log_format({"text_format": "%LOCAL_REPLY_BODY%"}, "log")


def test_refused_fields_name_their_path():
    assert "lrc.body_format.formatters: not supported yet" in _err(
        {"body_format": {"text_format": "x", "formatters": [{"name": "f"}]}})
    assert "lrc.mappers[0].body.watched_directory: not supported yet" in _err(
        {"mappers": [{"filter": _status(404), "body": {"watched_directory": {"path": "/tmp"}}}]})
    assert "lrc.mappers[0]: unknown field \"typo\"" in _err({"mappers": [{"filter": _status(404), "typo": 1}]})


def test_bad_header_to_add_and_bad_filter_name_their_path():
    assert "lrc.mappers[0].headers_to_add[0].header.key" in _err(
        {"mappers": [{"filter": _status(404), "headers_to_add": [{"header": {"key": ":status",
                                                                           "value": "1"}}]}]})
    assert "lrc.mappers[0].filter" in _err({"mappers": [{"filter": {"extension_filter": {}}}]})


def test_body_from_a_file_is_read_at_load(tmp_path):
    page = tmp_path / "page.html"
    page.write_bytes(b"<p>down</p>")
    cfg = parse_local_reply_config({"mappers": [{"filter": _status(503),
                                                 "body": {"filename": str(page)}}]}, P)
    assert cfg.mappers[0].body == b"<p>down</p>"
    assert "cannot read" in _err({"mappers": [{"filter": _status(503),
                                               "body": {"filename": str(tmp_path / "none")}}]})


# -- the rewrite --------------------------------------------------------------------------

def test_first_matching_mapper_wins_and_status_shows_the_mapped_code():
    raw = {"mappers": [{"filter": _status(404), "status_code": 403},
                       {"filter": _status(403), "body": {"inline_string": "second"}}],
           "body_format": {"text_format": "%RESPONSE_CODE%:%LOCAL_REPLY_BODY%"}}
    status, headers, body, stream = _prepare(raw)
    assert (status, body, stream.response_code) == (403, b"403:", 403)
    assert headers == {b"content-length": b"4", b"content-type": b"text/plain"}


def test_no_mapper_matches_body_format_still_applies():
    raw = {"mappers": [{"filter": _status(500), "status_code": 503}],
           "body_format": {"text_format": "[%LOCAL_REPLY_BODY%]"}}
    assert _prepare(raw, 403, b"denied")[::2][:2] == (403, b"[denied]")


def test_without_any_format_the_reply_keeps_its_body_and_empty_stays_empty():
    raw = {"mappers": [{"filter": _status(404), "headers_to_add": [{"header": {"key": "x-a",
                                                                              "value": "1"}}]}]}
    status, headers, body, _ = _prepare(raw)
    assert (status, headers, body) == (404, {b"x-a": b"1"}, b"")
    status, headers, body, _ = _prepare(raw, 404, b"gone")
    assert headers == {b"x-a": b"1", b"content-length": b"4", b"content-type": b"text/plain"}


def test_json_format_sorted_typed_and_omits_only_unset_values():
    raw = {"body_format": {"json_format": {"z": "%RESPONSE_CODE%", "a": "%LOCAL_REPLY_BODY%",
                                           "m": "%REQ(x-missing)%", "p": "%REQ(:PATH)%"},
                           "omit_empty_values": True}}
    status, headers, body, _ = _prepare(raw)
    assert body == b'{"a":"","p":"/x","z":404}\n'
    assert headers[b"content-type"] == b"application/json"


def test_content_type_of_the_format_replaces_the_reply_s_unless_a_mapper_sets_one():
    fmt = {"text_format": "<b>%LOCAL_REPLY_BODY%</b>", "content_type": "text/html"}
    extra = [(b"content-type", b"text/x-filter")]
    _, headers, _, _ = _prepare({"body_format": fmt}, 403, b"no", extra)
    assert headers[b"content-type"] == b"text/html"
    raw = {"body_format": fmt, "mappers": [{"filter": _status(403), "headers_to_add": [
        {"header": {"key": "content-type", "value": "application/x-mine"},
         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]}]}
    _, headers, _, _ = _prepare(raw, 403, b"no", extra)
    assert headers[b"content-type"] == b"application/x-mine"


def test_header_filter_and_headers_to_add_with_request_operators():
    raw = {"mappers": [{"filter": {"header_filter": {"header": {"name": "x-api",
                                                                "present_match": True}}},
                        "status_code": 418,
                        "headers_to_add": [{"header": {"key": "x-path", "value": "%REQ(:PATH)%"}}]}]}
    status, headers, _, _ = _prepare(raw, stream=_stream(b"/teapot", x_api="1"))
    assert (status, headers[b"x-path"]) == (418, b"/teapot")
    assert _prepare(raw)[0] == 404


def test_grpc_reply_carries_the_rendered_body_as_grpc_message():
    raw = {"body_format": {"text_format": "%RESPONSE_CODE% 100%% %LOCAL_REPLY_BODY%\n"},
           "mappers": [{"filter": _status(503), "status_code": 404}]}
    status, headers, body, _ = _prepare(raw, 503, b"down", grpc=True)
    assert (status, body) == (200, b"")
    assert headers[b"grpc-status"] == b"12"   # NOT_FOUND, from the mapped 404
    assert headers[b"grpc-message"] == b"404 100%25 down%0A"
    assert headers[b"content-type"] == b"application/grpc" and b"content-length" not in headers


def test_grpc_json_body_drops_its_trailing_newline():
    raw = {"body_format": {"json_format": {"m": "%LOCAL_REPLY_BODY%"}}}
    _, headers, _, _ = _prepare(raw, 503, b"down", grpc=True)
    assert headers[b"grpc-message"] == b'{"m":"down"}'


def test_head_request_grpc_reply_has_no_message():
    raw = {"body_format": {"text_format": "x"}}
    _, headers, _, _ = _prepare(raw, 503, b"down", grpc=True, head=True)
    assert b"grpc-message" not in headers


def test_grpc_message_percent_encoding_is_envoys():
    assert grpc_message(b"plain text") == b"plain text"
    assert grpc_message(b"a%b\r\n~\xc3\xa9") == b"a%25b%0D%0A%7E%C3%A9"


def test_default_grpc_reply_keeps_the_callers_headers_and_no_content_length():
    from proxy.http.local_reply import grpc_local_reply_head
    head = grpc_local_reply_head(429, b"limited", None, [(b"x-rl", b"1")])
    assert head.status == 200
    assert dict(head.headers.items()) == {b"x-rl": b"1", b"content-type": b"application/grpc",
                                          b"grpc-status": b"14", b"grpc-message": b"limited"}
    head = grpc_local_reply_head(503, b"down", 4, head_request=True)
    assert dict(head.headers.items()) == {b"content-type": b"application/grpc",
                                          b"grpc-status": b"4"}
