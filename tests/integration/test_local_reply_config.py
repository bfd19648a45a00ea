"""local_reply_config through the real proxy: the access log's %RESPONSE_CODE% is the mapped
code, and a proxied response is never rewritten (the rest against real Envoy:
tests/differential/cases/local_reply_config.yaml)."""

from __future__ import annotations

import os

from .clients import request
from .harness import EchoUpstream, ProxyUnderTest, front_proxy_config, static_cluster

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def test_access_log_shows_the_mapped_code_and_proxied_responses_pass_untouched(tmp_path):
    up = EchoUpstream("service1")
    log_path = str(tmp_path / "access.log")
    status_404 = {"status_code_filter": {"comparison": {
        "op": "EQ", "value": {"default_value": 404, "runtime_key": "k"}}}}
    cfg = front_proxy_config(
        [{"match": {"prefix": "/status/"}, "route": {"cluster": "c1"}}],
        [static_cluster("c1", up.port)],
        local_reply_config={"mappers": [{"filter": status_404, "status_code": 410,
                                         "body": {"inline_string": "gone"}}],
                            "body_format": {"text_format": "%RESPONSE_CODE% %LOCAL_REPLY_BODY%"}},
        access_log=[{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": log_path, "log_format": {"text_format_source": {
                "inline_string": "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n"}}}}])
    p = ProxyUnderTest(cfg)
    try:
        r = request(p.port, "/nowhere")
        assert (r.status, r.body) == (410, b"410 gone")
        r = request(p.port, "/status/404")  # the upstream's 404: not a local reply
        assert (r.status, r.body) == (404, b"")

        def logged():
            text = open(log_path).read() if os.path.exists(log_path) else ""
            return "/nowhere 410 NR\n" in text and "/status/404 404 -\n" in text
        assert p.wait_for(logged), open(log_path).read() if os.path.exists(log_path) else ""
    finally:
        p.stop()
        up.close()
